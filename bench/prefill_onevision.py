"""LLaVA-OneVision prefill time per llavaov-duet-* preset against its FLOP bound and HF PyTorch.

A LLaVA-OneVision-7B-shaped model (SigLIP at 384 px / 14 px patches: 729 patches per
crop, 26 tower layers read at the last; Qwen2 LM of 28 layers with GQA, 4 q heads per
kv head) at
reduced widths, random weights, one 768 x 768 image per sample (2x2 grid: 5 crops,
3,699 HF image tokens with unpadding and newlines) and `--text-tokens` text tokens.
Reports JAX prefill time (median of `--repeats`, round robin), speedup over the
unreduced run, the analytic FLOP bound of that speedup and the fraction reached;
the PyTorch peer is transformers' `LlavaOnevisionForConditionalGeneration` (sdpa)
on the same shapes, unreduced (HF has no reduced OneVision path), timed in the same
rounds.

    python bench/prefill_onevision.py [--batch 1] [--text-tokens 64] [--repeats 3]
        [--width-v 256 --width-t 512 --vision-layers 26 --text-layers 28 --vocab 32064]

Smoke run (a minute): --width-v 64 --width-t 128 --vision-layers 2 --vocab 512 --repeats 1.
Writes bench/results/prefill_onevision_b{batch}.json.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from bench.common import (family_arguments, print_table, speedup_rows, time_anyres_presets,
                          write_json)
from bench.flops import _layer, lm_flops
from duet_jax.models import anyres
from duet_jax.models import onevision_layout as layout
from duet_jax.models.config import TextConfig, VisionConfig
from duet_jax.models.llava import unstack_params
from duet_jax.models.onevision import OnevisionModel
from duet_jax.models.onevision_layout import OnevisionConfig

PRESETS = ["llavaov-duet-810", "llavaov-duet-403", "llavaov-duet-203"]
IMAGE_AT, IMAGE_SIZE, CROP = 5, (768, 768), 384


def onevision_prefill_flops(cfg: OnevisionConfig, size, text_tokens: int, reduction=None) -> float:
    """Analytic FLOPs of one sample's prefill: SigLIP on every crop to the feature layer,
    projector, LM segments at their token counts, Stage-2 scoring, last-token head (the
    bilinear resize and the Stage-1 selection are left out: O(tokens) next to these)."""
    v, t = cfg.vision, cfg.text
    crops = anyres.num_crops(cfg, size)
    tower = crops * (2 * v.num_patches * v.patch_size ** 2 * v.num_channels * v.hidden_size
                     + (cfg.feature_layer_index + 1) * _layer(v.num_patches, v.hidden_size,
                                                              v.hidden_size, 3 * v.hidden_size,
                                                              v.intermediate_size, 2))
    if reduction is not None and reduction.stage1 is not None:
        n0 = crops * reduction.stage1.output_size(v.num_patches)
    else:
        n0 = layout.num_image_tokens(cfg, size)
    proj = 2 * crops * v.num_patches * (v.hidden_size + t.hidden_size) * t.hidden_size
    lm, scoring = lm_flops(t, n0, text_tokens, reduction)
    return tower + proj + lm + scoring + 2 * t.hidden_size * t.vocab_size


def torch_peer(cfg: OnevisionConfig, ids, pixels, sizes):
    """HF `LlavaOnevisionForConditionalGeneration` (sdpa, fp32, random weights) of the same
    shape: a thunk running its unreduced prefill to the last-token logits."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration
    from transformers import LlavaOnevisionConfig
    hf_cfg = cfg.to_hf()
    model = LlavaOnevisionForConditionalGeneration._from_config(
        LlavaOnevisionConfig(**{k: v for k, v in hf_cfg.items() if k != "model_type"}),
        attn_implementation="sdpa").eval()
    ids, px, sz = (torch.tensor(np.asarray(a)) for a in (ids, pixels, sizes))

    def run():
        with torch.inference_mode():
            return model(input_ids=ids, pixel_values=px, image_sizes=sz, logits_to_keep=1).logits
    return run


def main():
    ap = family_arguments(__doc__.splitlines()[0], PRESETS, tower="SigLIP", vision_layers=26,
                          text_layers=28, width_t_multiple=128)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    args = ap.parse_args()
    heads = args.width_t // 64
    cfg = OnevisionConfig(
        vision=VisionConfig(hidden_size=args.width_v, intermediate_size=4 * args.width_v,
                            num_hidden_layers=args.vision_layers, image_size=CROP,
                            num_attention_heads=args.width_v // 64, hidden_act="gelu_pytorch_tanh",
                            layer_norm_eps=1e-6),
        text=TextConfig(vocab_size=args.vocab, hidden_size=args.width_t,
                        intermediate_size=int(2.6875 * args.width_t),
                        num_hidden_layers=args.text_layers,
                        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                        max_position_embeddings=8192, rope_theta=1e6),
        image_token_index=args.vocab - 1, video_token_index=args.vocab - 2,
        image_grid_pinpoints=tuple((h, w) for h in range(CROP, 6 * CROP + 1, CROP)
                                   for w in range(CROP, 6 * CROP + 1, CROP)))   # HF's default
    module = OnevisionModel(cfg)
    params = unstack_params(module.init(jax.random.key(0)))
    b, n = args.batch, layout.num_image_tokens(cfg, IMAGE_SIZE)
    peer = None if args.no_torch else (
        "torch (HF, unreduced)", lambda ids, pixels: torch_peer(cfg, ids, pixels,
                                                                [IMAGE_SIZE] * b))
    settings, times, avg_of, crops = time_anyres_presets(module, params, args, n, IMAGE_SIZE,
                                                         CROP, IMAGE_AT, peer)
    flops_of = lambda red: onevision_prefill_flops(cfg, IMAGE_SIZE, args.text_tokens, red)
    results, rows = speedup_rows(times, settings, times, flops_of, avg_of)
    results.update(gflops_unreduced=flops_of(None) / 1e9, image_tokens_unreduced=n)
    print(f"LLaVA-OneVision prefill, batch {b}, {crops} crops ({n} HF image tokens), "
          f"{args.text_tokens} text tokens, {args.vision_layers} SigLIP / {args.text_layers} LM "
          f"layers, widths {args.width_v}/{args.width_t}, {jax.default_backend()}")
    print_table(["setting", "avg vis tok", "FLOP bound", "ms", "speedup vs JAX none",
                 "of bound"], rows)
    path = write_json(f"prefill_onevision_b{b}.json",
                      {"batch": b, "text_tokens": args.text_tokens,
                       "widths": [args.width_v, args.width_t], "repeats": args.repeats,
                       "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
