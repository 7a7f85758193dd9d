"""LLaVA-NeXT (AnyRes) prefill time per llavanext-duet-* preset against its FLOP bound.

A LLaVA-NeXT-7B-shaped model (336 px crops of 14 px patches, 24 CLIP / 32 LM layers,
MHA) at reduced widths, random weights, one square image per sample (2x2 grid: 5
crops; 2,928 HF image tokens with unpadding and newlines) and `--text-tokens` text
tokens. Reports JAX prefill time (median of `--repeats`, round robin), speedup
over the unreduced run, the analytic FLOP bound of that speedup and the fraction
reached.

    python bench/prefill_next.py [--batch 1] [--text-tokens 64] [--repeats 3]
        [--width-v 256 --width-t 512 --vision-layers 24 --text-layers 32 --vocab 32064]

Smoke run (seconds): --width-v 64 --width-t 64 --vision-layers 2 --vocab 512 --repeats 1.
Writes bench/results/prefill_next_b{batch}.json.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from bench.common import (family_arguments, print_table, speedup_rows, time_anyres_presets,
                          write_json)
from bench.flops import _layer, lm_flops
from duet_jax.models import anyres
from duet_jax.models.anyres import LlavaNextConfig
from duet_jax.models.config import TextConfig, VisionConfig
from duet_jax.models.llava import unstack_params
from duet_jax.models.llava_next import LlavaNextModel

PRESETS = ["llavanext-duet-640", "llavanext-duet-320", "llavanext-duet-160"]
IMAGE_AT, IMAGE_SIZE = 5, (672, 672)        # (H, W) original: the 2x2 grid


def next_prefill_flops(cfg: LlavaNextConfig, size, text_tokens: int, reduction=None) -> float:
    """Analytic FLOPs of one sample's NeXT prefill (CLIP on every crop to the feature layer,
    projector, LM segments at their token counts, Stage-2 scoring, last-token head)."""
    v, t = cfg.vision, cfg.text
    crops = anyres.num_crops(cfg, size)
    clip = crops * (2 * v.num_patches * v.patch_size ** 2 * v.num_channels * v.hidden_size
                    + (cfg.feature_layer_index + 1) * _layer(v.num_patches + 1, v.hidden_size,
                                                             v.hidden_size, 3 * v.hidden_size,
                                                             v.intermediate_size, 2))
    if reduction is not None and reduction.stage1 is not None:
        n0, projected = [anyres.reduced_block_size(
            cfg, size, reduction.stage1.output_size(v.num_patches))] * 2
    else:
        n0, projected = anyres.num_image_tokens(cfg, size), crops * v.num_patches
    proj = 2 * projected * (v.hidden_size + t.hidden_size) * t.hidden_size
    lm, scoring = lm_flops(t, n0, text_tokens, reduction)
    return clip + proj + lm + scoring + 2 * t.hidden_size * t.vocab_size


def main():
    ap = family_arguments(__doc__.splitlines()[0], PRESETS, tower="CLIP", vision_layers=24,
                          text_layers=32)
    args = ap.parse_args()
    cfg = LlavaNextConfig(
        vision=VisionConfig(hidden_size=args.width_v, intermediate_size=4 * args.width_v,
                            num_hidden_layers=args.vision_layers,
                            num_attention_heads=args.width_v // 64),
        text=TextConfig(vocab_size=args.vocab, hidden_size=args.width_t,
                        intermediate_size=int(2.6875 * args.width_t),
                        num_hidden_layers=args.text_layers, num_attention_heads=args.width_t // 64,
                        max_position_embeddings=4096),
        image_token_index=args.vocab - 1)
    module = LlavaNextModel(cfg)
    params = unstack_params(module.init(jax.random.key(0)))
    b, n = args.batch, anyres.num_image_tokens(cfg, IMAGE_SIZE)
    settings, times, avg_of, crops = time_anyres_presets(module, params, args, n, IMAGE_SIZE,
                                                         336, IMAGE_AT)
    flops_of = lambda red: next_prefill_flops(cfg, IMAGE_SIZE, args.text_tokens, red)
    results, rows = speedup_rows(settings, settings, times, flops_of, avg_of)
    results.update(gflops_unreduced=flops_of(None) / 1e9, image_tokens_unreduced=n)
    print(f"LLaVA-NeXT prefill, batch {b}, {crops} crops ({n} HF image tokens), "
          f"{args.text_tokens} text tokens, {args.vision_layers} CLIP / {args.text_layers} LM "
          f"layers, widths {args.width_v}/{args.width_t}, {jax.default_backend()}")
    print_table(["setting", "avg vis tok", "FLOP bound", "JAX ms", "speedup", "of bound"], rows)
    path = write_json(f"prefill_next_b{b}.json", {"batch": b, "text_tokens": args.text_tokens,
                                                  "widths": [args.width_v, args.width_t],
                                                  "repeats": args.repeats, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
