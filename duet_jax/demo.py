"""`make demo`: a tiny random LLaVA built with transformers, converted to our orbax
format, run in Flax on the bundled image, unreduced and with DUET presets;
prints the logits' agreement with HF PyTorch and the timings.

No weights are downloaded: the model is random, so the numbers show numerical
agreement and speed, not accuracy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "assets", "demo.png")


def build_hf_checkpoint(out_dir: str, seed: int = 0) -> None:
    """A LLaVA-1.5-shaped (336px / 14, 576 patches) tiny random HF checkpoint."""
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)
    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4, image_size=336, patch_size=14, projection_dim=64)
    tc = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=344, num_hidden_layers=32,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=1000,
                      image_seq_length=576)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    model.save_pretrained(out_dir)
    CLIPImageProcessorPil(size={"shortest_edge": 336},
                          crop_size={"height": 336, "width": 336}).save_pretrained(out_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="duet_jax demo on a tiny random LLaVA")
    ap.add_argument("--workdir", default=os.path.join(".cache", "demo"))
    ap.add_argument("--presets", nargs="*", default=["llava15-duet-192", "llava15-duet-128",
                                                     "llava15-duet-64"])
    args = ap.parse_args(argv)
    import jax
    import torch
    from transformers import LlavaForConditionalGeneration
    import duet_jax
    from duet_jax.data.images import load_image_processor, preprocess_image

    hf_dir, jax_dir = os.path.join(args.workdir, "hf"), os.path.join(args.workdir, "jax")
    shutil.rmtree(args.workdir, ignore_errors=True)
    t0 = time.perf_counter()
    build_hf_checkpoint(hf_dir)
    subprocess.run([sys.executable, "-m", "convert", "--src", hf_dir, "--dst", jax_dir], check=True)
    print(f"built + converted a tiny random LLaVA in {time.perf_counter() - t0:.1f}s -> {jax_dir}")

    model = duet_jax.load_llava(jax_dir)
    cfg = model.config
    pixels = preprocess_image(ASSET, load_image_processor(hf_dir))[None]
    g = np.random.default_rng(0)
    ids = g.integers(3, 900, (1, 24 + cfg.image_seq_length)).astype(np.int64)
    ids[0, 4:4 + cfg.image_seq_length] = cfg.image_token_index

    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    for _ in range(2):   # the second call is the steady-state time
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.numpy()
        t_torch = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = np.asarray(model.logits(ids, pixels))
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.asarray(model.logits(ids, pixels))
    t_jax = time.perf_counter() - t0
    print(f"unreduced logits [1, {ids.shape[1]}, {ref.shape[-1]}]: max |JAX - PyTorch| = "
          f"{np.abs(ours - ref).max():.2e}")
    print(f"forward: PyTorch eager {t_torch * 1e3:.0f} ms; JAX first call (compile) "
          f"{t_first * 1e3:.0f} ms, jitted {t_jax * 1e3:.0f} ms")
    from duet_jax.reduction import average_visual_tokens, get_preset
    for name in args.presets:
        red = get_preset(name)
        model.logits(ids, pixels, reduction=red)
        t0 = time.perf_counter()
        out = np.asarray(model.logits(ids, pixels, reduction=red))
        dt = time.perf_counter() - t0
        avg = average_visual_tokens(red, cfg.vision.num_patches, cfg.text.num_hidden_layers)
        n0 = red.image_tokens(cfg.vision.num_patches)
        print(f"{name}: {n0} image tokens after stage 1, logits {list(out.shape)}, "
              f"jitted {dt * 1e3:.0f} ms, average visual tokens per LM layer {avg:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
