"""Generation latency per sample: full tokens vs the DUET 192/128/64 presets, JAX beside
the PyTorch peer.

A short answer (POPE-style, 1 new token: prefill + the first token) and a long
answer (64 new tokens, EOS disabled so every sample decodes all 64), at batch 1
and batch 8, on the LLaVA-shaped config (576 patches, 24 CLIP layers, 32 LLM
layers; reduced widths, random weights). The prompt is an image block plus
`--text-tokens` text tokens (a POPE prompt is about 60 with the system text), the
image right after the first 35. The peer (`bench/torch_generate.py`: the drops in an
HF-module prefill writing a `DynamicCache`, then greedy KV-cached decoding, as the
official code's patched `generate` does) runs the same weights (one HF model,
converted into JAX); its tokens are checked equal to ours.

    python bench/generation.py [--repeats 2] [--batches 1 8] [--text-tokens 64] \
                               [--width-v 256 --width-t 512] [--no-torch] [--quick]

Each setting is compiled (and run) once before timing; then the settings of one
(batch, answer) group, JAX and peer, are timed round-robin and the median of
`--repeats` rounds is reported, so ratios are measured side by side. GFLOP/s:
analytic FLOPs (`bench.flops.generation_flops`) over time, against the measured
matmul peak. `--quick`: batch 1, DUET-64 and unreduced, 1 repeat.
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

import torch

from bench.common import (hf_and_jax_llava, llava_shaped_hf_config, load_note,
                          matmul_peak_gflops, print_table, prompt_batch, roofline, roofline_cells,
                          time_round_robin, write_json)
from bench.flops import generation_flops
from bench.torch_generate import greedy_generate
from duet_jax.generation.decode import generate_tokens
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import average_visual_tokens, get_preset

SETTINGS = ["none", "llava15-duet-192", "llava15-duet-128", "llava15-duet-64"]
ANSWERS = {"short": 1, "long": 64}
IMAGE_AT = 35


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--settings", nargs="+", default=SETTINGS)
    ap.add_argument("--width-v", type=int, default=256, help="CLIP width (multiple of 64)")
    ap.add_argument("--width-t", type=int, default=512, help="LLM width (multiple of 64)")
    ap.add_argument("--no-torch", action="store_true", help="JAX only (no peer)")
    ap.add_argument("--quick", action="store_true", help="batch 1, none + DUET-64, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.settings, args.repeats = [1], ["none", "llava15-duet-64"], 1
    torch.set_num_threads(os.cpu_count())
    hf_cfg = llava_shaped_hf_config(width_v=args.width_v, width_t=args.width_t)
    hf, cfg, params = hf_and_jax_llava(hf_cfg)   # unstacked: load_llava's inference layout
    module = LlavaModel(cfg)
    patches, layers = cfg.vision.num_patches, cfg.text.num_hidden_layers
    load, peak = load_note(), matmul_peak_gflops()

    settings = {name: None if name == "none" else get_preset(name) for name in args.settings}
    results, rows = {}, []
    started = time.perf_counter()
    for batch in args.batches:
        np_ids, np_mask, np_pixels = prompt_batch(cfg, batch, args.text_tokens, IMAGE_AT)
        ids, pixels, mask = (jnp.asarray(x) for x in (np_ids, np_pixels, np_mask))
        tids, tpix = torch.tensor(np_ids.astype(np.int64)), torch.tensor(np_pixels)
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
                if not args.no_torch:
                    runs[("torch", name)] = functools.partial(
                        greedy_generate, hf, tids, tpix, red, IMAGE_AT, new_tokens)
            # settings interleaved round by round: drifting load hits all of them alike
            seconds = time_round_robin(runs, repeats=args.repeats)
            for name, red in settings.items():
                per_sample = seconds[name] / batch
                speedup = seconds.get("none", float("nan")) / seconds[name]
                avg = average_visual_tokens(red, patches, layers)
                flops = batch * generation_flops(cfg, args.text_tokens, new_tokens, red)
                entry = {"batch": batch, "answer": answer, "new_tokens": new_tokens,
                         "setting": name, "avg_visual_tokens": avg,
                         "seconds_per_batch": seconds[name], "ms_per_sample": 1e3 * per_sample,
                         "speedup_vs_none": speedup, "first_call_seconds": first[name],
                         **roofline(flops, seconds[name], peak)}
                row = [batch, f"{answer} ({new_tokens})", name, f"{avg:.1f}",
                       f"{1e3 * per_sample:.1f}", f"{speedup:.2f}", f"{first[name]:.1f}",
                       *roofline_cells(flops, seconds[name], peak)]
                if not args.no_torch:
                    t_peer = seconds[("torch", name)]
                    ours = np.asarray(runs[name]())
                    ref = runs[("torch", name)]().numpy()
                    entry["torch"] = {"ms_per_sample": 1e3 * t_peer / batch,
                                      **roofline(flops, t_peer, peak)}
                    entry["torch_over_jax"] = t_peer / seconds[name]
                    entry["tokens_equal"] = bool((ours == ref).all())
                    row += [f"{1e3 * t_peer / batch:.1f}", *roofline_cells(flops, t_peer, peak),
                            f"{entry['torch_over_jax']:.2f}", "yes" if entry["tokens_equal"] else "NO"]
                results[f"b{batch}/{answer}/{name}"] = entry
                rows.append(row)
                print(f"  b{batch} {answer} {name}: {1e3 * per_sample:.1f} ms/sample", flush=True)
    print(f"\ngeneration latency per sample, LLaVA-shaped (24 CLIP / 32 LLM layers, widths "
          f"{cfg.vision.hidden_size}/{cfg.text.hidden_size}, vocab {cfg.text.vocab_size}), "
          f"{args.text_tokens} text tokens, {jax.default_backend()}, median of {args.repeats}, "
          f"{load} at start; GFLOP/s against the measured {peak:.0f} GFLOP/s matmul peak")
    headers = ["batch", "answer (new tok)", "setting", "avg vis tok", "JAX ms/sample",
               "speedup", "1st call s", "JAX GFLOP/s", "JAX of peak"]
    if not args.no_torch:
        headers += ["torch ms/sample", "torch GFLOP/s", "torch of peak", "torch/JAX",
                    "tokens equal"]
    print_table(headers, rows)
    path = write_json("generation_quick.json" if args.quick else "generation.json", {
        "text_tokens": args.text_tokens, "repeats": args.repeats, "load_at_start": load,
        "matmul_peak_gflops": peak,
        "config": {"vision_width": cfg.vision.hidden_size, "text_width": cfg.text.hidden_size,
                   "vocab": cfg.text.vocab_size, "patches": patches, "llm_layers": layers,
                   "clip_layers": cfg.vision.num_hidden_layers},
        "wall_seconds": time.perf_counter() - started, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
