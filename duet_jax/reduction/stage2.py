"""Stage 2: text-to-vision rank-and-drop inside the LM (docs/ALGORITHM.md §3).

Scoring (docs/ALGORITHM.md §3.2) re-computes the next layer's queries and keys from the
detached hidden states and averages the softmax attention of the query rows
onto the image columns: `text_image_scores` is the Llama rule (no q/k bias,
1-D RoPE); every family ends in `scores_from_qk`, so a family whose layer
differs (Qwen2.5-VL: biases, M-RoPE) only projects its own q/k. The query
sets are `duet_jax.reduction.queries`. The drop (docs/ALGORITHM.md §3.4, §3.6) is a static-size
gather map. Every count (``num_image``, ``k``, ``out_len``) is a Python int;
per-sample quantities (image start, length, query rows; LLaVA-NeXT's
per-sample ``n_prev``/``n_new`` as host ints) are arrays.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.labels import IGNORE_INDEX
from duet_jax.ops import apply_rope, default_rope_inv_freq, rms_norm, rope_cos_sin

POSITION_MODES = ("renumber", "keep")


# --------------------------------------------------------------------------
# Scores.

def text_image_scores(hidden, norm_scale, wq, wk, positions, attention_mask, query_mask,
                      image_start, *, num_image: int, num_heads: int, num_kv_heads: int,
                      rms_eps: float, rope_theta: float, rope_inv_freq=None,
                      rope_attention_scaling: float = 1.0, query_block: int = 128,
                      query_rows: Optional[int] = None):
    """Mean attention of the query rows onto the image columns (docs/ALGORITHM.md §3.2).

    Args:
      hidden: [B, L, D] hidden states entering the boundary layer (detached here).
      norm_scale: [D] that layer's input RMSNorm weight.
      wq, wk: [D, H*hd], [D, KV*hd] projection kernels (y = x @ w, no bias).
      positions: [B, L] int RoPE positions of the rows.
      attention_mask: [B, L] bool/int, 1 = real token.
      query_mask: [B, L] bool, rows whose attention is averaged.
      image_start: [B] int index of the first image token (<0: no image).
      num_image: static image-block length; heads: H query heads, KV key heads
        (query head h uses key head h // (H/KV)).
      rope_inv_freq: optional [hd/2] inverse frequencies overriding
        ``rope_theta`` (models with rope scaling); ``rope_attention_scaling``
        multiplies cos/sin as HF does.
      query_block: static number of query rows scored at once; memory is
        O(B * H * query_block * L) instead of O(B * H * L^2).
      query_rows: optional static window: only rows ``image_start + num_image
        - 1 + [0, query_rows)`` are scored (every query set of docs/ALGORITHM.md §3.3 lies there:
        the last image row onwards), so the cost is O(query_rows * L) instead of
        O(L^2). ``L - num_image + 1`` covers every row to the end. Query-mask
        rows outside the window are ignored.

    Returns:
      [B, num_image] float32: mean over heads and query rows of the causal +
      padding masked softmax (float32, over all keys) at columns
      ``image_start + i``; columns outside [0, L) score 0; a sample with no
      image (image_start < 0) or no query row scores 0 everywhere.
    """
    batch, seq_len, _ = hidden.shape
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads="
                         f"{num_kv_heads}; pass the model's head counts")
    if wq.shape[-1] % num_heads or wk.shape[-1] % num_kv_heads:
        raise ValueError(f"wq {wq.shape} / wk {wk.shape} do not split into {num_heads} / "
                         f"{num_kv_heads} heads; check the kernels' [D, heads*hd] layout")
    head_dim = wq.shape[-1] // num_heads
    if wk.shape[-1] // num_kv_heads != head_dim:
        raise ValueError(f"wq and wk head dims differ ({head_dim} vs "
                         f"{wk.shape[-1] // num_kv_heads})")
    inv_freq = (default_rope_inv_freq(head_dim, rope_theta) if rope_inv_freq is None
                else rope_inv_freq)
    rows, row_ok = query_window(image_start, num_image, batch, seq_len, query_rows)
    x = rms_norm(jax.lax.stop_gradient(hidden), norm_scale, rms_eps, cast_scale=False)
    q = (take_rows(x, rows) @ wq).reshape(batch, rows.shape[1], num_heads, head_dim)
    k = (x @ wk).reshape(batch, seq_len, num_kv_heads, head_dim)
    cos_q, sin_q = rope_cos_sin(take_rows(positions, rows), inv_freq, rope_attention_scaling,
                                q.dtype)
    cos_k, sin_k = rope_cos_sin(positions, inv_freq, rope_attention_scaling, k.dtype)
    return scores_from_qk(apply_rope(q, cos_q, sin_q), apply_rope(k, cos_k, sin_k), rows, row_ok,
                          attention_mask, query_mask, image_start, num_image=num_image,
                          query_block=query_block)


def take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    """x [B, L, ...] -> x [B, R, ...] at rows [B, R] (any trailing axes)."""
    return jnp.take_along_axis(x, rows.reshape(rows.shape + (1,) * (x.ndim - 2)), axis=1)


def query_window(image_start, num_image: int, batch: int, seq_len: int,
                 query_rows: Optional[int]):
    """The rows a Stage-2 score reads: (rows [B, R] int32 clipped into [0, L), row_ok [B, R]).

    query_rows=None: every row (R = L). Otherwise the static window
    ``image_start + num_image - 1 + [0, query_rows)`` (R = query_rows), which
    holds every query set of docs/ALGORITHM.md §3.3; rows past the sequence are not ok.
    """
    if query_rows is None:
        rows = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
        return rows, jnp.ones((batch, seq_len), bool)
    first = image_start.astype(jnp.int32)[:, None] + (num_image - 1)
    rows = first + jnp.arange(query_rows, dtype=jnp.int32)
    return jnp.clip(rows, 0, seq_len - 1), (rows >= 0) & (rows < seq_len)


def scores_from_qk(q, k, rows, row_ok, attention_mask, query_mask, image_start, *,
                   num_image: int, query_block: int = 128) -> jax.Array:
    """The scoring core of every family: mean attention of the query rows onto the image.

    q [B, R, H, hd] queries of rows [B, R] (`query_window`; row_ok [B, R]) and
    k [B, L, KV, hd] keys of all rows, both with RoPE applied, unscaled; query
    head h uses key head h // (H/KV). attention_mask, query_mask [B, L];
    image_start [B] (< 0: no image). Causal + padding masked softmax in float32
    over all keys, `query_block` query rows at a time (memory O(B H bq L)),
    mean over heads and over the query rows that are in the window, ok and in
    query_mask. Returns [B, num_image] float32 at columns ``image_start + i``
    (0 outside [0, L), without an image, or without query rows).
    """
    batch, num_rows, num_heads, head_dim = q.shape
    seq_len, num_kv_heads = k.shape[1], k.shape[2]
    groups = num_heads // num_kv_heads
    q = q.reshape(batch, num_rows, num_kv_heads, groups, head_dim).astype(jnp.float32)
    q = q * (1.0 / math.sqrt(head_dim))
    k = k.astype(jnp.float32)
    query_mask = take_rows(query_mask.astype(bool), rows) & row_ok

    key_valid = attention_mask.astype(bool)                          # [B, L]
    image_cols = image_start.astype(jnp.int32)[:, None] + jnp.arange(num_image, dtype=jnp.int32)
    cols_in_range = (image_start[:, None] >= 0) & (image_cols >= 0) & (image_cols < seq_len)
    image_cols = jnp.clip(image_cols, 0, seq_len - 1)

    block = max(1, min(query_block, num_rows))
    num_blocks = -(-num_rows // block)
    pad = num_blocks * block - num_rows
    blocks = lambda a: jnp.moveaxis(
        jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2)).reshape(
            (batch, num_blocks, block) + a.shape[2:]), 1, 0)
    q_blocks, qmask_blocks, row_blocks = blocks(q), blocks(query_mask), blocks(rows)
    key_index = jnp.arange(seq_len, dtype=jnp.int32)
    gather_cols = jnp.broadcast_to(image_cols[:, None, None, None, :],
                                   (batch, num_kv_heads, groups, block, num_image))

    def score_block(total, inputs):
        q_blk, qmask_blk, rows = inputs                              # rows [B, bq]
        logits = jnp.einsum("bqkgd,blkd->bkgql", q_blk, k)          # [B, KV, G, bq, L]
        allowed = (key_index[None, None, :] <= rows[:, :, None]) & key_valid[:, None, :]
        logits = jnp.where(allowed[:, None, None], logits, -jnp.inf)
        row_max = jnp.max(logits, axis=-1, keepdims=True)
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
        lse = jnp.log(jnp.sum(jnp.exp(logits - row_max), axis=-1, keepdims=True)) + row_max
        image_logits = jnp.take_along_axis(logits, gather_cols, axis=-1)
        probs = jnp.where(jnp.isfinite(lse), jnp.exp(image_logits - lse), 0.0)
        head_mean = jnp.mean(probs, axis=(1, 2))                     # [B, bq, n]
        return total + jnp.sum(jnp.where(qmask_blk[..., None], head_mean, 0.0), axis=1), None

    total, _ = jax.lax.scan(score_block, jnp.zeros((batch, num_image), jnp.float32),
                            (q_blocks, qmask_blocks, row_blocks))
    count = jnp.sum(query_mask.astype(jnp.float32), axis=-1, keepdims=True)
    return jnp.where(cols_in_range, total / jnp.maximum(count, 1.0), 0.0)


def keep_top_image_tokens(scores: jax.Array, k: int) -> jax.Array:
    """[B, n] scores -> [B, k] int32 kept image indices, ascending (ties to the lowest index)."""
    if not 0 <= k <= scores.shape[-1]:
        raise ValueError(f"cannot keep k={k} of {scores.shape[-1]} image tokens; "
                         f"use 0 <= k <= {scores.shape[-1]}")
    if k == 0:
        return jnp.zeros(scores.shape[:-1] + (0,), jnp.int32)
    return jnp.sort(jax.lax.top_k(scores, k)[1].astype(jnp.int32), axis=-1)


def keep_top_per_sample(scores: jax.Array, n_prev, n_new) -> jax.Array:
    """Per-sample counts (host ints [B]): scores [B, P] (P = max n_prev) -> keep
    [B, max n_new] int32 ascending; sample b keeps its top n_new[b] of its first
    n_prev[b] columns (ties to the lowest index), slots past n_new[b] hold P.
    Equal counts give exactly `keep_top_image_tokens(scores, n_new)`."""
    n_prev, n_new = np.asarray(n_prev, np.int64), np.asarray(n_new, np.int64)
    width, k = scores.shape[1], int(n_new.max())
    if np.all(n_prev == width) and np.all(n_new == k):
        return keep_top_image_tokens(scores, k)
    cols = jnp.arange(width)[None, :]
    scores = jnp.where(cols < jnp.asarray(n_prev)[:, None], scores, -1.0)   # real scores >= 0
    top = jax.lax.top_k(scores, k)[1].astype(jnp.int32)          # descending, ties -> low index
    slot = jnp.arange(k)[None, :]
    top = jnp.where(slot < jnp.asarray(n_new)[:, None], top, width)
    return jnp.sort(top, axis=-1)


# --------------------------------------------------------------------------
# Drop and rebuild (docs/ALGORITHM.md §3.4, §3.6).

class DropResult(NamedTuple):
    """Reduced batch, right-padded to ``out_len``.

    hidden [B, out_len, D] (0 on padding), labels [B, out_len] (-100 on padding,
    None when not given), attention_mask [B, out_len] (input dtype), positions
    [B, out_len] int32 (0 on padding).
    """

    hidden: jax.Array
    labels: Optional[jax.Array]
    attention_mask: jax.Array
    positions: jax.Array


def reduced_lengths(lengths, passthrough, image_start, n_prev, n_new):
    """[B] lengths after a drop: ``len - (n_prev - n_new)`` unless passed through
    (counts: ints, or per-sample [B])."""
    through = passthrough.astype(bool) | (image_start < 0)
    return jnp.where(through, lengths, lengths - (n_prev - n_new)).astype(jnp.int32)


def segment_length(lengths, passthrough, n_prev: int, n_new: int, bucket: int = 1) -> int:
    """Host-side static buffer length for the next segment (docs/ALGORITHM.md §3.6),
    rounded up to ``bucket``.

    ``passthrough`` [B] must also flag samples without an image.
    """
    lengths = np.asarray(lengths, np.int64)
    new = np.where(np.asarray(passthrough, bool), lengths, lengths - (n_prev - n_new))
    longest = int(new.max()) if new.size else 0
    return max(bucket, -(-longest // bucket) * bucket)


def drop_gather_index(keep, image_start, lengths, passthrough, *, n_prev, out_len: int,
                      n_new=None):
    """Gather map of the drop: slot j of the new sequence reads old row src[b, j].

    keep [B, K] kept image indices (ascending, relative to image_start);
    image_start, lengths, passthrough [B] (image_start < 0 also passes through).
    n_prev: the block length before the drop, n_new: the kept count (default
    K); each a Python int, or host ints [B] per sample (LLaVA-NeXT; keep slots
    past n_new[b] are never read). Returns (src [B, out_len] int32, valid
    [B, out_len] bool); src is 0 on invalid slots. ``out_len`` must be >= every
    reduced length (rows beyond it would be cut).
    """
    k = keep.shape[-1]
    n_new = k if n_new is None else n_new
    if np.any(np.asarray(n_new) > np.asarray(n_prev)):
        raise ValueError(f"cannot keep {n_new} of {n_prev} image tokens")
    per_sample = lambda n: jnp.asarray(n, jnp.int32) if np.ndim(n) else n     # [B] or int
    new_len = reduced_lengths(lengths, passthrough, image_start, per_sample(n_prev),
                              per_sample(n_new))
    column = lambda n: per_sample(n)[:, None] if np.ndim(n) else n             # [B, 1] or int
    n_prev, n_new = column(n_prev), column(n_new)
    slots = jnp.arange(out_len, dtype=jnp.int32)[None, :]
    start = image_start.astype(jnp.int32)[:, None]
    offset = jnp.clip(slots - start, 0, max(k - 1, 0))
    kept = (jnp.take_along_axis(keep.astype(jnp.int32), offset, axis=-1) if k
            else jnp.zeros_like(slots))
    src = jnp.where(slots < start, slots,
                    jnp.where(slots < start + n_new, start + kept, slots + (n_prev - n_new)))
    through = (passthrough.astype(bool) | (image_start < 0))[:, None]
    src = jnp.where(through, slots, src)
    valid = slots < new_len[:, None]
    return jnp.where(valid, src, 0).astype(jnp.int32), valid


def apply_drop(hidden, src, valid, *, attention_mask, labels=None, positions=None,
               positions_mode: str = "renumber") -> DropResult:
    """Gather hidden [B, L, D], labels, mask (and positions) with a drop map.

    ``positions_mode='renumber'`` (LLaVA/PyramidDrop): new positions
    ``0..len'-1``; ``'keep'`` (FastV, Qwen2.5-VL): kept rows keep their
    ``positions`` [B, L] ids. Gradients flow to the gathered rows of hidden.
    """
    if positions_mode not in POSITION_MODES:
        raise ValueError(f"unknown positions mode {positions_mode!r}; use {POSITION_MODES}")
    if positions_mode == "keep" and positions is None:
        raise ValueError("positions_mode='keep' needs the pre-drop positions [B, L]")
    rows = jnp.take_along_axis(hidden, src[..., None], axis=1)
    new_hidden = jnp.where(valid[..., None], rows, jnp.zeros((), hidden.dtype))
    gathered_mask = jnp.take_along_axis(attention_mask, src, axis=1).astype(bool) & valid
    new_labels = (None if labels is None else
                  jnp.where(valid, jnp.take_along_axis(labels, src, axis=1), IGNORE_INDEX))
    if positions_mode == "renumber":
        slots = jnp.arange(src.shape[-1], dtype=jnp.int32)[None, :]
        new_positions = jnp.where(valid, slots, 0)
    else:
        new_positions = jnp.where(valid, jnp.take_along_axis(positions, src, axis=1), 0)
    return DropResult(new_hidden, new_labels, gathered_mask.astype(attention_mask.dtype),
                      new_positions.astype(jnp.int32))
