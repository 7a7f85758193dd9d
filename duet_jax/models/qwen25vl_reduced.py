"""Qwen2.5-VL with DUET: Stage 1 in place on the merged vision tokens, Stage 2 in the LM.

Stage 1 (ALGORITHM.md §2.6): scores/metric from the last vision block's full
attention, `vision_merge_in_place` on the post-merger embeddings, and the
prompt is gathered so the K kept rows sit where the image block was, each
with its original M-RoPE ids (the text after the image keeps its ids too).
Stage 2 (§3.2-3.4 project default, §3.10): next-layer q/k with biases and
M-RoPE, causal mask, GQA, counts relative to n_0 = K, `positions='keep'`.
Every length is static: grids and the presets' counts are host-known. The
reduced paths take batch 1 (the official setting) or a batch whose samples hold
one image each, all of one grid (what resolution buckets give); the unreduced
path any batch.

Generation: prefill keeps each segment's KV cache; a decode token's M-RoPE id
is `next_position + t` on all three axes (HF's rope delta), at every layer.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from duet_jax.models.common import layer_at
from duet_jax.models.qwen25vl import Qwen25VLModel
from duet_jax.models.qwen_vision import stage1_inputs, vision_forward
from duet_jax.ops import apply_rope, rms_norm
from duet_jax.reduction.stage1_nocls import vision_merge_in_place
from duet_jax.reduction.stage2 import drop_gather_index, keep_top_image_tokens
from duet_jax.reduction.stage2_qk import image_scores_from_qk


class Segment(NamedTuple):
    lo: int
    hi: int
    valid: jax.Array          # [B, L_s] bool
    kv: Optional[tuple]       # (k, v) each [hi-lo, B, L_s, KV, hd]


class QwenForward(NamedTuple):
    hidden: jax.Array         # [B, L', D] before the final norm
    valid: jax.Array          # [B, L'] bool
    positions: jax.Array      # [3, B, L'] M-RoPE ids of the final sequence
    segments: list
    stage1_index: Optional[jax.Array]   # [B, K] kept merged-token indices (ascending)
    kept: list                # Stage-2 keep [B, n_s] per boundary (relative to the block)


def _gather(src, ok, h, valid, positions):
    """Gather rows `src` [B, L'] of h [B, L, D], valid [B, L], positions [3, B, L]."""
    h = jnp.where(ok[..., None], jnp.take_along_axis(h, src[..., None], axis=1), 0)
    valid = jnp.take_along_axis(valid, src, axis=1) & ok
    positions = jnp.where(ok[None], jnp.take_along_axis(positions, src[None], axis=2), 0)
    return h, valid, positions


def _check_reduction(reduction, batch: int, grids: tuple):
    if reduction is None:
        return
    if batch > 1 and (len(grids) != batch or len(set(grids)) != 1):
        raise ValueError(f"a reduced Qwen2.5-VL batch of {batch} needs one image per sample, all "
                         f"of one grid (got grids {grids}); bucket the images "
                         "(Qwen25VL.encode does) or run batch 1")
    s2 = reduction.stage2
    if reduction.stage1 is not None and reduction.stage1.cls_token:
        raise ValueError(f"{reduction.name}: Qwen2.5-VL has no CLS token; use a "
                         "Stage1Config(cls_token=False) preset (qwen25vl-duet-*)")
    if s2 is not None and (s2.positions != "keep" or s2.method != "pdrop"
                           or s2.queries not in ("all", "last")):
        raise ValueError(f"{reduction.name}: Qwen2.5-VL Stage 2 supports method 'pdrop', "
                         "positions 'keep' and queries 'all'/'last'")


def _stage1(model, params, vout, grids, h, valid, positions, image_start, s1):
    """Per sample (one image each, one grid for all: `grids[:1]` is every image's)."""
    cfg = model.config
    b = h.shape[0]
    last = vout.last_input.reshape(b, -1, vout.last_input.shape[-1])   # images are contiguous
    scores, metric = jax.vmap(lambda x: stage1_inputs(cfg.vision, params["vision"], x,
                                                      grids[:1]))(last)
    emb = vout.embeds.astype(h.dtype).reshape(b, -1, vout.embeds.shape[-1])
    merge = vision_merge_in_place(scores, metric, emb, dominant=s1.dominant,
                                  contextual=s1.contextual, width=s1.width)
    n_img, k = emb.shape[1], merge.tokens.shape[1]
    src, ok = drop_gather_index(merge.index, image_start, valid.sum(-1),
                                jnp.zeros(valid.shape[:1], bool), n_prev=n_img,
                                out_len=h.shape[1] - (n_img - k))
    h, valid, positions = _gather(src, ok, h, valid, positions)
    slots = jnp.arange(h.shape[1])[None]
    rel = slots - image_start[:, None]
    in_block = (rel >= 0) & (rel < k)
    rows = jnp.take_along_axis(merge.tokens, jnp.clip(rel, 0, k - 1)[..., None], axis=1)
    return jnp.where(in_block[..., None], rows, h), valid, positions, merge.index


def _score_boundary(text, layer_params, h, valid, positions, image_start, n_prev, queries):
    """Stage-2 scores [B, n_prev] with the next layer's biased q/k and M-RoPE."""
    cfg = text.config
    attn = layer_params["self_attn"]
    x = rms_norm(jax.lax.stop_gradient(h), layer_params["input_layernorm"]["scale"], cfg.rms_norm_eps)
    proj = lambda p: x @ p["kernel"].astype(x.dtype) + p["bias"].astype(x.dtype)
    b, length, hd = h.shape[0], h.shape[1], cfg.head_dim
    cos, sin = text.rope(positions)
    q = apply_rope(proj(attn["q_proj"]).reshape(b, length, -1, hd), cos, sin)
    k = apply_rope(proj(attn["k_proj"]).reshape(b, length, -1, hd), cos, sin)
    rows = jnp.arange(length)[None]
    if queries == "last":
        qmask = rows == (valid.sum(-1, keepdims=True) - 1)
    else:
        qmask = valid & (rows >= image_start[:, None] + n_prev)
    return image_scores_from_qk(q, k, valid, qmask, image_start, num_image=n_prev)


def reduced_forward(model: Qwen25VLModel, params, input_ids, pixel_values, grids: tuple,
                    positions, attention_mask=None, reduction=None, *,
                    return_kv: bool = False) -> QwenForward:
    """input_ids [B, L], pixel_values [N, patch_dim], positions [3, B, L] (`rope_index`)."""
    cfg, text = model.config, model.text
    _check_reduction(reduction, input_ids.shape[0], grids)
    vout = None if pixel_values is None else vision_forward(
        cfg.vision, params["vision"], pixel_values, grids, model.dtype)
    h = model.embed(params, input_ids, None if vout is None else vout.embeds)
    valid = (jnp.ones(input_ids.shape, bool) if attention_mask is None
             else attention_mask.astype(bool))
    is_img = input_ids == cfg.image_token_id
    image_start = jnp.where(is_img.any(-1), jnp.argmax(is_img, axis=-1), -1).astype(jnp.int32)
    s1 = reduction.stage1 if reduction is not None else None
    s2 = reduction.stage2 if reduction is not None else None
    stage1_index = None
    n0 = 0 if vout is None else vout.embeds.shape[0] // input_ids.shape[0]
    if s1 is not None and vout is not None:
        h, valid, positions, stage1_index = _stage1(model, params, vout, grids, h, valid,
                                                    positions, image_start, s1)
        n0 = stage1_index.shape[1]
    num_layers = cfg.text.num_hidden_layers
    counts = s2.image_counts(n0) if (s2 is not None and vout is not None) else [n0]
    bounds = [0, *(s2.layers if len(counts) > 1 else ()), num_layers]
    segments, kept = [], []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        h, kv = text.run_layers(params["text"], h, positions, valid, lo, hi, return_kv=return_kv)
        segments.append(Segment(lo, hi, valid, kv))
        if s == len(bounds) - 2 or counts[s] == 0:
            continue
        n_prev, n_new = counts[s], counts[s + 1]
        scores = _score_boundary(text, layer_at(params["text"]["layers"], hi), h, valid,
                                 positions, image_start, n_prev, s2.queries)
        keep = keep_top_image_tokens(scores, n_new)
        src, ok = drop_gather_index(keep, image_start, valid.sum(-1),
                                    jnp.zeros(valid.shape[:1], bool), n_prev=n_prev,
                                    out_len=h.shape[1] - (n_prev - n_new))
        h, valid, positions = _gather(src, ok, h, valid, positions)
        kept.append(keep)
    return QwenForward(h, valid, positions, segments, stage1_index, kept)


@functools.partial(jax.jit, static_argnames=("model", "grids", "reduction"))
def reduced_logits(model, params, input_ids, pixel_values, grids, positions, attention_mask,
                   reduction):
    """Jitted logits [B, L', V] of the (reduced) prompt, plus the final validity [B, L']."""
    fwd = reduced_forward(model, params, input_ids, pixel_values, grids, positions,
                          attention_mask, reduction)
    return model.text.head(params["text"], fwd.hidden), fwd.valid
