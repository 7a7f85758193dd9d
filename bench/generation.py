"""Generation latency per sample: full tokens vs the DUET 192/128/64 presets.

A short answer (POPE-style, 1 new token: prefill + the first token) and a long
answer (64 new tokens, EOS disabled so every sample decodes all 64), at batch 1
and batch 8, on the LLaVA-shaped config (576 patches, 24 CLIP layers, 32 LLM
layers; reduced widths, random params from `LlavaModel(cfg).init`, no checkpoint).
The prompt is an image block plus `--text-tokens` text tokens (a POPE prompt is
about 60 with the system text), the image right after the first 35.

    python bench/generation.py [--repeats 2] [--batches 1 8] [--text-tokens 64] \
                               [--width-v 256 --width-t 512]

Each setting is compiled (and run) once before timing; then the settings of one
(batch, answer) group are timed round-robin and the median of `--repeats` rounds
is reported, so ratios are measured side by side.
Prints a table and writes bench/results/generation.json.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import llava_shaped_hf_config, print_table, time_round_robin, write_json
from duet_jax.generation.decode import generate_tokens
from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel, unstack_params
from duet_jax.reduction import average_visual_tokens, get_preset

SETTINGS = ["none", "llava15-duet-192", "llava15-duet-128", "llava15-duet-64"]
ANSWERS = {"short": 1, "long": 64}
IMAGE_AT = 35


def make_batch(cfg: LlavaConfig, batch: int, text_tokens: int, seed: int = 0):
    """input_ids [B, L] with one image block each, all-ones mask, pixels [B, 3, H, W]."""
    g = np.random.default_rng(seed)
    n = cfg.image_seq_length
    ids = g.integers(3, 30000, (batch, n + text_tokens)).astype(np.int32)
    ids[:, IMAGE_AT:IMAGE_AT + n] = cfg.image_token_index
    size = cfg.vision.image_size
    pixels = g.standard_normal((batch, 3, size, size)).astype(np.float32)
    return jnp.asarray(ids), jnp.asarray(pixels), jnp.ones(ids.shape, jnp.int32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--settings", nargs="+", default=SETTINGS)
    ap.add_argument("--width-v", type=int, default=256, help="CLIP width (multiple of 64)")
    ap.add_argument("--width-t", type=int, default=512, help="LLM width (multiple of 64)")
    args = ap.parse_args()
    hf_cfg = llava_shaped_hf_config(width_v=args.width_v, width_t=args.width_t)
    cfg = LlavaConfig.from_hf(hf_cfg.to_dict())
    module = LlavaModel(cfg)
    params = unstack_params(module.init(jax.random.key(0)))   # the inference layout (load_llava's)
    patches, layers = cfg.vision.num_patches, cfg.text.num_hidden_layers

    settings = {name: None if name == "none" else get_preset(name) for name in args.settings}
    results, rows = {}, []
    started = time.perf_counter()
    for batch in args.batches:
        ids, pixels, mask = make_batch(cfg, batch, args.text_tokens)
        for answer, new_tokens in ANSWERS.items():
            runs, first = {}, {}
            for name, red in settings.items():
                # eos_id=-1: the random model never stops early, so every sample decodes
                # exactly `new_tokens` tokens.
                runs[name] = functools.partial(
                    lambda red: generate_tokens(module, params, ids, pixels, mask, reduction=red,
                                                max_new_tokens=new_tokens,
                                                eos_id=-1).tokens.block_until_ready(), red)
                t0 = time.perf_counter()
                runs[name]()                                # compile + first run
                first[name] = time.perf_counter() - t0
            # settings interleaved round by round: drifting load hits all of them alike
            seconds = time_round_robin(runs, repeats=args.repeats)
            for name, red in settings.items():
                per_sample = seconds[name] / batch
                speedup = seconds.get("none", float("nan")) / seconds[name]
                avg = average_visual_tokens(red, patches, layers)
                results[f"b{batch}/{answer}/{name}"] = {
                    "batch": batch, "answer": answer, "new_tokens": new_tokens, "setting": name,
                    "avg_visual_tokens": avg, "seconds_per_batch": seconds[name],
                    "ms_per_sample": 1e3 * per_sample, "speedup_vs_none": speedup,
                    "first_call_seconds": first[name]}
                rows.append([batch, f"{answer} ({new_tokens})", name, f"{avg:.1f}",
                             f"{1e3 * per_sample:.1f}", f"{speedup:.2f}", f"{first[name]:.1f}"])
                print(f"  b{batch} {answer} {name}: {1e3 * per_sample:.1f} ms/sample", flush=True)
    print(f"\ngeneration latency per sample, LLaVA-shaped (24 CLIP / 32 LLM layers, widths "
          f"{cfg.vision.hidden_size}/{cfg.text.hidden_size}, vocab {cfg.text.vocab_size}), "
          f"{args.text_tokens} text tokens, {jax.default_backend()}, median of {args.repeats}")
    print_table(["batch", "answer (new tok)", "setting", "avg vis tok", "ms/sample",
                 "speedup", "1st call s"], rows)
    path = write_json("generation.json", {
        "text_tokens": args.text_tokens, "repeats": args.repeats,
        "config": {"vision_width": cfg.vision.hidden_size, "text_width": cfg.text.hidden_size,
                   "vocab": cfg.text.vocab_size, "patches": patches, "llm_layers": layers,
                   "clip_layers": cfg.vision.num_hidden_layers},
        "wall_seconds": time.perf_counter() - started, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
