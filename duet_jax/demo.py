"""`make demo`: (1) a quick JAX-vs-PyTorch agreement check on a tiny random LLaVA,
(2) the miniature DUET-VLM reproduction (duet_jax/miniature): a LLaVA-shaped
model with 576 visual tokens trained from scratch on a synthetic shapes/letters
task on this CPU, then the paper's tables in miniature.

Everything is cached under `.cache/` (data, trained checkpoints, answers), so a
second `make demo` only re-prints the tables. Outputs: `.cache/demo/report.md`,
`.cache/demo/accuracy_vs_tokens.png`, `.cache/demo/kept/<reduction>/*.png`.
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
    tc = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=1000,
                      image_seq_length=576)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    model.save_pretrained(out_dir)
    CLIPImageProcessorPil(size={"shortest_edge": 336},
                          crop_size={"height": 336, "width": 336}).save_pretrained(out_dir)


def agreement_check(workdir: str) -> None:
    """Random HF LLaVA -> `python -m convert` -> Flax; max |logit difference| vs PyTorch."""
    import torch
    from transformers import LlavaForConditionalGeneration
    import duet_jax
    from duet_jax.data.images import load_image_processor, preprocess_image

    hf_dir, jax_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "jax")
    shutil.rmtree(workdir, ignore_errors=True)
    build_hf_checkpoint(hf_dir)
    subprocess.run([sys.executable, "-m", "convert", "--src", hf_dir, "--dst", jax_dir],
                   check=True, stdout=subprocess.DEVNULL)
    model = duet_jax.load_llava(jax_dir)
    cfg = model.config
    pixels = preprocess_image(ASSET, load_image_processor(hf_dir))[None]
    ids = np.random.default_rng(0).integers(3, 900, (1, 24 + cfg.image_seq_length)).astype(np.int64)
    ids[0, 4:4 + cfg.image_seq_length] = cfg.image_token_index
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.numpy()
    ours = np.asarray(model.logits(ids, pixels))
    print(f"  unreduced logits {list(ref.shape)}: max |JAX - PyTorch| = "
          f"{np.abs(ours - ref).max():.2e} (random LLaVA, converted with python -m convert)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=os.path.join(".cache", "miniature"),
                    help="data, checkpoints and answers (cached between runs)")
    ap.add_argument("--out", default=os.path.join(".cache", "demo"),
                    help="report.md, the plot and the kept-token pictures")
    ap.add_argument("--skip-agreement", action="store_true",
                    help="skip the JAX-vs-PyTorch agreement check")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if not args.skip_agreement:
        print("== 1. JAX vs PyTorch on a tiny random LLaVA ==")
        agreement_check(os.path.join(args.out, "agreement"))
        print(f"  ({time.perf_counter() - t0:.0f} s)\n")
    print("== 2. Miniature DUET-VLM reproduction (trained from scratch on this machine) ==")
    from duet_jax.miniature.pipeline import PipelineConfig, run
    result = run(PipelineConfig(workdir=args.workdir, out=args.out),
                 log=lambda line: print(line, flush=True))
    print()
    print(result["inference_table"])
    print()
    print(result["trained_table"])
    print(f"\nplot: {result['plot']}\nkept-token pictures: {result['kept_dir']}/\n"
          f"report: {result['report']}\n"
          f"demo wall time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
