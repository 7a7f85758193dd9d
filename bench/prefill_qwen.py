"""Prefill time of a Qwen2.5-VL-shaped model (32 window/full ViT blocks, 28-layer GQA LM),
unreduced and per `qwen25vl-duet-*` preset, each against its analytic FLOP bound.

Random weights at reduced widths (the layer/head structure and token counts are the
7B's): the HF model is built with transformers' classes, saved and loaded through the
converter. The image is a `--grid H W` patch grid (H*W/4 LLM tokens); presets clip
`d`, `c` per image (K <= T); the default 64x80 patches (32 x 40 = 1280 tokens, a
resolution bucket) is large enough for all three presets to reduce. A smoke run:

    python bench/prefill_qwen.py --grid 16 16 --width-v 64 --width-t 112 --repeats 1

Prints a table and writes bench/results/prefill_qwen.json.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import print_table, time_round_robin, write_json
from bench.flops import lm_flops
from duet_jax.generation.decode import last_token_logits
from duet_jax.checkpoints.qwen25vl import load_qwen_params
from duet_jax.models.qwen25vl import Qwen25VLModel, rope_index
from duet_jax.models.qwen25vl_reduced import reduced_forward
from duet_jax.models.qwen_vision import grid_layout
from duet_jax.reduction import average_visual_tokens, get_preset

PRESETS = ["qwen25vl-duet-640", "qwen25vl-duet-320", "qwen25vl-duet-160",
           "qwen25vl-duet-640-scripts"]
IMAGE_AT = 5


def _sections(half: int) -> list:
    """M-RoPE split of `half` frequencies in the 7B's 16:24:24 proportion."""
    hw = 3 * half // 8
    return [half - 2 * hw, hw, hw]


def hf_model(width_v: int, width_t: int, vocab: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    vc = dict(depth=32, hidden_size=width_v, intermediate_size=width_v * 8 // 3, num_heads=16,
              out_hidden_size=width_t, fullatt_block_indexes=[7, 15, 23, 31], window_size=112)
    tc = dict(vocab_size=vocab, hidden_size=width_t, intermediate_size=width_t * 37 // 7,
              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
              max_position_embeddings=32768,
              rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                   mrope_section=_sections(width_t // 28 // 2)))
    cfg = Qwen2_5_VLConfig(vision_config=vc, text_config=tc, image_token_id=vocab - 1,
                           video_token_id=vocab - 2, vision_start_token_id=vocab - 3,
                           vision_end_token_id=vocab - 4)
    return Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()


def _block(t, d, mlp, attn_pairs, n_mlp=3):
    """One pre-norm block: qkv + out projections, MLP, attention over `attn_pairs` (q, k)."""
    return 2 * t * d * 4 * d + 2 * t * n_mlp * d * mlp + 4 * attn_pairs * d


def prefill_flops(cfg, grid, text_tokens: int, reduction=None) -> dict:
    """Analytic FLOPs: ViT (window/full attention pairs from the real layout), merger,
    Stage-1 scoring, LM segments (GQA projections), Stage-2 scoring, last-token head."""
    v, t = cfg.vision, cfg.text
    n = grid[0] * grid[1] * grid[2]
    lay = grid_layout(v, (grid,))
    win_pairs = float(sum(np.bincount(lay.window_segment) ** 2))
    vit = 2 * n * v.patch_dim * v.hidden_size
    for i in range(v.depth):
        vit += _block(n, v.hidden_size, v.intermediate_size,
                      n * n if i in v.fullatt_block_indexes else win_pairs)
    tokens = n // v.merge_unit
    merger = 2 * tokens * (4 * v.hidden_size) * (4 * v.hidden_size + v.out_hidden_size)
    s1 = reduction.stage1 if reduction is not None else None
    n0 = s1.output_size(tokens) if s1 else tokens
    stage1 = (2 * n * v.hidden_size * 2 * v.hidden_size + 2 * n * n * v.hidden_size) if s1 else 0.0
    lm, scoring = lm_flops(t, n0, text_tokens, reduction, score_all_rows=True)
    head = 2 * t.hidden_size * t.vocab_size
    total = vit + merger + stage1 + lm + scoring + head
    return {"vit": vit, "merger": merger, "stage1": stage1, "lm": lm, "scoring": scoring,
            "head": head, "total": total, "image_tokens_in": n0}


@functools.partial(jax.jit, static_argnames=("module", "grids", "reduction"))
def prefill(module, params, ids, pixels, grids, positions, reduction):
    fwd = reduced_forward(module, params, ids, pixels, grids, positions, None, reduction)
    return last_token_logits(module.text, params["text"], fwd.hidden, fwd.valid)[:, None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", nargs=2, type=int, default=[64, 80], help="patch rows, cols (even)")
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--width-v", type=int, default=256, help="ViT width (multiple of 16)")
    ap.add_argument("--width-t", type=int, default=448, help="LLM width (multiple of 56: 28 heads, even head dim)")
    ap.add_argument("--vocab", type=int, default=32064)
    args = ap.parse_args()
    hf = hf_model(args.width_v, args.width_t, args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        cfg, params = load_qwen_params(tmp)
    params = jax.tree.map(jnp.asarray, params)
    module = Qwen25VLModel(cfg)
    grid = (1, *args.grid)
    tokens = grid[1] * grid[2] // cfg.vision.merge_unit
    g = np.random.default_rng(0)
    ids = g.integers(3, args.vocab - 10, (1, tokens + args.text_tokens)).astype(np.int32)
    ids[:, IMAGE_AT:IMAGE_AT + tokens] = cfg.image_token_id
    pixels = g.standard_normal((grid[1] * grid[2], cfg.vision.patch_dim)).astype(np.float32)
    pos, _ = rope_index(cfg, ids, [grid])
    dev = (jnp.asarray(ids), jnp.asarray(pixels), (grid,), jnp.asarray(pos))
    settings = {"none": None, **{name: get_preset(name) for name in args.presets}}
    fns = {name: (lambda r=red: prefill(module, params, *dev, r).block_until_ready())
           for name, red in settings.items()}
    times = time_round_robin(fns, repeats=args.repeats)
    base = prefill_flops(cfg, grid, args.text_tokens)["total"]
    results, rows = {"gflops_unreduced": base / 1e9, "image_tokens": tokens}, []
    for name, red in settings.items():
        flops = prefill_flops(cfg, grid, args.text_tokens, red)
        bound = base / flops["total"]
        avg = tokens if red is None else average_visual_tokens(red, tokens, 28)
        speedup = times["none"] / times[name]
        results[name] = {"avg_tokens": avg, "n0": flops["image_tokens_in"], "flop_bound": bound,
                         "seconds": times[name], "speedup": speedup,
                         "fraction_of_bound": speedup / bound}
        rows.append([name, str(flops["image_tokens_in"]), f"{avg:.2f}", f"{bound:.2f}",
                     f"{times[name] * 1e3:.0f}", f"{speedup:.2f}", f"{speedup / bound:.2f}"])
    print(f"Qwen2.5-VL-shaped prefill, batch 1, grid {grid} ({tokens} image tokens), "
          f"{args.text_tokens} text tokens, widths {args.width_v}/{args.width_t}, "
          f"{jax.default_backend()}")
    print_table(["setting", "n0", "avg vis tok", "FLOP bound", "ms", "speedup", "of bound"], rows)
    print(f"wrote {write_json('prefill_qwen.json', {'grid': grid, 'results': results})}")


if __name__ == "__main__":
    main()
