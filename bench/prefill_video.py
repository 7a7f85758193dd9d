"""Prefill time of a Video-LLaVA-shaped model (8 frames x 256 patches + CLS, 24 CLIP /
32 LLM layers, reduced widths) for the unreduced model and the `videollava-duet-*`
presets, each against its analytic FLOP bound (`bench/flops.py`, crops = frames).

JAX only: the PyTorch unreduced forward is run once to check the JAX logits.

    python bench/prefill_video.py [--text-tokens 64] [--repeats 3]
                                  [--width-v 256 --width-t 512 --vocab 32064]
                                  [--image-size 224 --frames 8 --vision-layers 24]

Prints a table and writes bench/results/prefill_video.json (tiny runs with --out '').
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bench.common import jax_prefill, print_table, time_round_robin, write_json
from bench.flops import prefill_flops
from duet_jax.checkpoints.load import load_params
from duet_jax.models.video_llava import VideoLlavaModel, unstack_video_params, view_params
from duet_jax.reduction import average_visual_tokens, get_preset

PRESETS = ["videollava-duet-960", "videollava-duet-136"]
VIDEO_AT = 5


def video_llava_shaped_hf_config(width_v=256, width_t=512, vocab=32064, image_size=224,
                                 frames=8, vision_layers=24):
    """Video-LLaVA-7B's shape (two CLIP-L towers, 32 Llama layers, MHA) at reduced widths."""
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig
    vc = CLIPVisionConfig(hidden_size=width_v, intermediate_size=4 * width_v,
                          num_hidden_layers=vision_layers, num_attention_heads=width_v // 64,
                          image_size=image_size, patch_size=14, projection_dim=width_v)
    tc = LlamaConfig(vocab_size=vocab, hidden_size=width_t, intermediate_size=int(2.6875 * width_t),
                     num_hidden_layers=32, num_attention_heads=width_t // 64,
                     num_key_value_heads=width_t // 64, max_position_embeddings=4096)
    n = (image_size // 14) ** 2
    return VideoLlavaConfig(vision_config=vc, text_config=tc, image_token_index=vocab - 2,
                            video_token_index=vocab - 1, image_seq_length=n,
                            video_seq_length=frames * (n + 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--width-v", type=int, default=256, help="CLIP width (multiple of 64)")
    ap.add_argument("--width-t", type=int, default=512, help="LLM width (multiple of 64)")
    ap.add_argument("--vocab", type=int, default=32064)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--vision-layers", type=int, default=24)
    ap.add_argument("--out", default="prefill_video.json", help="results file name ('' = none)")
    args = ap.parse_args()
    torch.manual_seed(0)
    hf_cfg = video_llava_shaped_hf_config(args.width_v, args.width_t, args.vocab, args.image_size,
                                          args.frames, args.vision_layers)
    from transformers import VideoLlavaForConditionalGeneration
    hf = VideoLlavaForConditionalGeneration._from_config(hf_cfg, attn_implementation="sdpa").eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        cfg, params = load_params(tmp)
    params = view_params(unstack_video_params(params), "video")
    module = VideoLlavaModel(cfg).view("video")
    n = cfg.video_seq_length
    g = np.random.default_rng(0)
    ids = g.integers(3, args.vocab - 3, (1, n + args.text_tokens)).astype(np.int32)
    ids[:, VIDEO_AT:VIDEO_AT + n] = cfg.video_token_index
    mask = np.ones_like(ids)
    size = cfg.vision.image_size
    pixels = g.standard_normal((1, cfg.num_frames, 3, size, size)).astype(np.float32)
    dev = [jnp.asarray(x) for x in (ids, pixels, mask)]
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids.astype(np.int64)),
                 pixel_values_videos=torch.tensor(pixels)).logits[:, -1].numpy()
    ours = np.asarray(jax_prefill(module, params, *dev, None))[:, 0]
    settings = {"none": None}
    for name in args.presets:
        red = get_preset(name)
        red.validate(cfg.vision.num_patches, cfg.text.num_hidden_layers, crops=cfg.num_frames)
        settings[name] = red
    fns = {name: (lambda red=red: jax_prefill(module, params, *dev, red).block_until_ready())
           for name, red in settings.items()}
    times = time_round_robin(fns, repeats=args.repeats)
    f = cfg.num_frames
    base = prefill_flops(cfg.media("video"), args.text_tokens, None, crops=f)["total"]
    results = {"gflops_unreduced": base / 1e9,
               "max_abs_logit_diff_vs_torch_unreduced": float(np.abs(ours - ref).max())}
    rows = []
    for name, red in settings.items():
        flops = prefill_flops(cfg.media("video"), args.text_tokens, red, crops=f)
        bound = base / flops["total"]
        avg = (n if red is None else
               average_visual_tokens(red, cfg.vision.num_patches, cfg.text.num_hidden_layers,
                                     crops=f))
        speedup = times["none"] / times[name]
        results[name] = {"avg_tokens": avg, "visual_tokens_in": flops["visual_tokens_in"],
                         "flop_bound": bound, "seconds": times[name], "speedup": speedup,
                         "fraction_of_bound": speedup / bound}
        rows.append([name, flops["visual_tokens_in"], f"{avg:.2f}", f"{bound:.2f}",
                     f"{times[name] * 1e3:.0f}", f"{speedup:.2f}", f"{speedup / bound:.2f}"])
    print(f"video prefill, batch 1, {f} frames x {cfg.vision.num_patches + 1} tokens, "
          f"{args.text_tokens} text tokens, widths {cfg.vision.hidden_size}/{cfg.text.hidden_size}, "
          f"{jax.default_backend()}; max |dlogit| vs torch (unreduced) "
          f"{results['max_abs_logit_diff_vs_torch_unreduced']:.1e}")
    print_table(["setting", "n_0", "avg vis tok", "FLOP bound", "JAX ms", "speedup", "of bound"],
                rows)
    if args.out:
        payload = {"text_tokens": args.text_tokens, "repeats": args.repeats,
                   "frames": f, "results": results}
        print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
