"""Analytic forward FLOPs of a LLaVA prefill (up to last-token logits), per reduction."""
from __future__ import annotations

from duet_jax.models.config import LlavaConfig


def _layer(t: int, d: int, attn_out: int, qkv_out: int, mlp: int, n_mlp_mats: int) -> float:
    linear = 2 * t * d * (qkv_out + attn_out) + 2 * t * n_mlp_mats * d * mlp
    attention = 4 * t * t * attn_out     # QK^T and AV over the full (masked) square
    return linear + attention


def lm_flops(t, n0: int, text_tokens: int, reduction=None, score_all_rows: bool = False):
    """(LM layers, Stage-2 scoring) FLOPs of a Llama-style LM (GQA projections) whose
    image block shrinks n0 -> stage2.image_counts(n0) at the Stage-2 boundaries.
    Scoring: q for the query window (last image row onwards; every row when
    `score_all_rows`), k for every row, against the full square."""
    hq, hkv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    counts, bounds = [n0], [0, t.num_hidden_layers]
    if reduction is not None and reduction.stage2 is not None:
        counts = reduction.stage2.image_counts(n0)
        bounds = [0, *reduction.stage2.layers, t.num_hidden_layers]
    lm = scoring = 0.0
    for s in range(len(bounds) - 1):
        length = text_tokens + counts[s]
        lm += (bounds[s + 1] - bounds[s]) * _layer(length, t.hidden_size, hq, hq + 2 * hkv,
                                                   t.intermediate_size, 3)
        if s < len(bounds) - 2:
            rows = length if score_all_rows else length - counts[s] + 1
            scoring += 2 * t.hidden_size * (rows * hq + length * hkv) + 2 * rows * length * hq
    return lm, scoring


def prefill_flops(cfg: LlavaConfig, text_tokens: int, reduction=None, crops: int = 1) -> dict:
    """FLOPs of CLIP (to the feature layer), projector, LM layers, Stage-2 scoring and
    the last-token head, for one sample with `text_tokens` text tokens. `crops`: CLIP
    runs (and Stage 1 applies) per crop/frame, their tokens form one image block
    (Video-LLaVA: `cfg.media("video")`, crops = frames)."""
    v, t = cfg.vision, cfg.text
    n_vis = v.num_patches + 1
    clip = 2 * v.num_patches * v.patch_size ** 2 * v.num_channels * v.hidden_size
    clip += (cfg.feature_layer_index + 1) * _layer(n_vis, v.hidden_size, v.hidden_size,
                                                   3 * v.hidden_size, v.intermediate_size, 2)
    clip *= crops
    n0 = cfg.num_image_tokens
    if reduction is not None and (reduction.stage1 is not None or reduction.select is not None):
        # Stage 1, or a zoo method at the LM input (docs/BASELINES.md §9): the work a
        # reduction cannot avoid; the selection itself is timed in bench/selection_cost.py
        n0 = reduction.image_tokens(v.num_patches)
    n0 *= crops
    proj = 2 * n0 * (v.hidden_size + t.hidden_size) * t.hidden_size
    lm, scoring = lm_flops(t, n0, text_tokens, reduction)
    head = 2 * t.hidden_size * t.vocab_size
    total = clip + proj + lm + scoring + head
    return {"clip": clip, "projector": proj, "lm": lm, "scoring": scoring, "head": head,
            "total": total, "visual_tokens_in": n0}


def generation_flops(cfg: LlavaConfig, text_tokens: int, new_tokens: int, reduction=None) -> float:
    """FLOPs of one sample's prefill plus `new_tokens - 1` KV-cached decode steps (the
    first token comes from the prefill): per step and layer the projections and MLP of
    one row, attention over the layer's cache (its segment's prefill rows + the steps
    so far), and the head."""
    t = cfg.text
    hq, hkv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    n0 = cfg.num_image_tokens
    if reduction is not None and reduction.stage1 is not None:
        n0 = reduction.stage1.output_size(cfg.vision.num_patches)
    counts, bounds = [n0], [0, t.num_hidden_layers]
    if reduction is not None and reduction.stage2 is not None:
        counts = reduction.stage2.image_counts(n0)
        bounds = [0, *reduction.stage2.layers, t.num_hidden_layers]
    row = 2 * t.hidden_size * (2 * hq + 2 * hkv) + 6 * t.hidden_size * t.intermediate_size
    total = prefill_flops(cfg, text_tokens, reduction)["total"]
    for step in range(1, new_tokens):
        for s in range(len(bounds) - 1):
            cache = text_tokens + counts[s] + step
            total += (bounds[s + 1] - bounds[s]) * (row + 4 * cache * hq)
        total += 2 * t.hidden_size * t.vocab_size
    return total
