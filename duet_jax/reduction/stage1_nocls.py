"""Stage 1 without a CLS token, merging in place (Qwen2.5-VL, docs/ALGORITHM.md §2.6).

There is no CLS row to read a query from, so a token's score is the attention
it *receives*: the column sum over queries of the head-mean attention
(`column_scores`), averaged over each merge group of patches (`group_mean`),
as is the metric (RoPE'd keys averaged over heads and group members).
Selection is `duet`'s (docs/ALGORITHM.md §2.3: dominant top-d, top-`w*c` pool, anchors every
`step`-th pool slot, members hard-assigned by cosine, anchor + member mean),
with `d` counting tokens exactly (clipped to `T-1`) and `c` clipped to `T-d`.
The kept rows stay **in place**: dominant and contextual rows come out in
ascending token order, each contextual row at its anchor's index, so the
caller can give them their original (M-RoPE) positions.

All counts are static Python ints; ties go to the lowest index (docs/ALGORITHM.md §2.8).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from duet_jax.reduction.stage1 import (_duet_slots, _membership, _merge_into_anchors,
                                       _take_rows, _top_indices, _unit)


class InPlaceMerge(NamedTuple):
    """tokens [B, K, D] (input dtype), index [B, K] int32 ascending token index of every
    row, contextual [B, K] bool (True for anchor rows that absorbed the merge set),
    member_index [B, Q] / member_anchor [B, Q]: merged tokens and their anchor slot."""
    tokens: jax.Array
    index: jax.Array
    contextual: jax.Array
    member_index: jax.Array
    member_anchor: jax.Array


def clipped_counts(num_tokens: int, dominant: int, contextual: int) -> tuple:
    """(d, c) after the per-image clipping of docs/ALGORITHM.md §2.6: d <= T-1, c <= T-d."""
    if num_tokens < 2:
        raise ValueError(f"an image with {num_tokens} merged token(s) cannot be reduced; "
                         "Stage 1 needs at least 2")
    if dominant < 1 or contextual < 0:
        raise ValueError(f"need dominant >= 1 and contextual >= 0, got {dominant}, {contextual}")
    d = min(dominant, num_tokens - 1)
    return d, min(contextual, num_tokens - d)


def in_place_size(num_tokens: int, dominant: int, contextual: int, width: int = 4) -> int:
    """Static output length K = d + C for T = `num_tokens` merged tokens."""
    d, c = clipped_counts(num_tokens, dominant, contextual)
    return d + len(_duet_slots(num_tokens - d, c, width)[1])


def column_scores(probs: jax.Array, query_mask=None) -> jax.Array:
    """probs [B, H, Q, N] softmax rows -> [B, N] float32: sum over (masked) queries of
    the head mean (attention received)."""
    p = jnp.mean(probs.astype(jnp.float32), axis=1)
    if query_mask is not None:
        p = jnp.where(query_mask[:, :, None], p, 0.0)
    return jnp.sum(p, axis=1)


def group_mean(x: jax.Array, group: int) -> jax.Array:
    """[B, N, ...] -> [B, N/group, ...]: mean over consecutive groups (merge units)."""
    b, n = x.shape[:2]
    if n % group:
        raise ValueError(f"{n} tokens do not split into groups of {group}")
    return jnp.mean(x.reshape((b, n // group, group) + x.shape[2:]).astype(jnp.float32), axis=2)


def vision_merge_in_place(scores: jax.Array, metric: jax.Array, tokens: jax.Array, *,
                          dominant: int, contextual: int, width: int = 4) -> InPlaceMerge:
    """Reduce T tokens to K (static) kept in place.

    Args:
      scores: [B, T] per-token scores (>= 0; higher = more important).
      metric: [B, T, Dm] similarity features (cosine on their unit vectors).
      tokens: [B, T, D] rows that are kept / merged (Qwen: post-merger embeddings).
    Returns:
      :class:`InPlaceMerge` with K = `in_place_size(T, dominant, contextual, width)`.
    """
    if scores.ndim != 2 or metric.ndim != 3 or tokens.ndim != 3:
        raise ValueError(f"need scores [B, T], metric [B, T, Dm], tokens [B, T, D]; got "
                         f"{scores.shape}, {metric.shape}, {tokens.shape}")
    num_tokens = tokens.shape[1]
    if scores.shape != tokens.shape[:2] or metric.shape[:2] != tokens.shape[:2]:
        raise ValueError(f"scores {scores.shape} / metric {metric.shape} do not match tokens "
                         f"{tokens.shape}")
    d, c = clipped_counts(num_tokens, dominant, contextual)
    scores = scores.astype(jnp.float32)
    dom = jnp.sort(_top_indices(scores, d), axis=-1)
    is_dom = _membership(dom, num_tokens)
    pool_size, anchor_slots, member_slots = _duet_slots(num_tokens - d, c, width)
    pool = _top_indices(jnp.where(is_dom, -jnp.inf, scores), pool_size)
    anchors, members = pool[:, anchor_slots], pool[:, member_slots]
    rows, assignment = _merge_into_anchors(tokens, _unit(metric), anchors, members)
    index = jnp.concatenate([dom, anchors], axis=1)
    values = jnp.concatenate([_take_rows(tokens, dom), rows.astype(tokens.dtype)], axis=1)
    is_ctx = jnp.concatenate([jnp.zeros(dom.shape, bool), jnp.ones(anchors.shape, bool)], axis=1)
    order = jnp.argsort(index, axis=-1)          # indices are distinct: in-place order
    take = lambda a: jnp.take_along_axis(a, order, axis=1)
    return InPlaceMerge(_take_rows(values, order), take(index), take(is_ctx), members, assignment)
