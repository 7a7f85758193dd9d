"""Stage 2: text-to-vision rank-and-drop inside the LM (ALGORITHM.md §3).

Scoring (§3.2) re-computes the next layer's queries and keys from the
detached hidden states and averages the softmax attention of the query rows
onto the image columns. The drop (§3.4, §3.6) is a static-size gather map.
Every count (``num_image``, ``k``, ``n_prev``, ``out_len``) is a Python int;
per-sample quantities (image start, length, query rows) are arrays.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.ops import IGNORE_INDEX, apply_rope, default_rope_inv_freq, rms_norm, rope_cos_sin

POSITION_MODES = ("renumber", "keep")


# --------------------------------------------------------------------------
# Scores.

def text_image_scores(hidden, norm_scale, wq, wk, positions, attention_mask, query_mask,
                      image_start, *, num_image: int, num_heads: int, num_kv_heads: int,
                      rms_eps: float, rope_theta: float, rope_inv_freq=None,
                      rope_attention_scaling: float = 1.0, query_block: int = 128,
                      query_rows: Optional[int] = None):
    """Mean attention of the query rows onto the image columns (§3.2).

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
        - 1 + [0, query_rows)`` are scored (every query set of §3.3 lies there:
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
    groups = num_heads // num_kv_heads
    inv_freq = (default_rope_inv_freq(head_dim, rope_theta) if rope_inv_freq is None
                else rope_inv_freq)

    if query_rows is None:
        rows = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
        row_ok = jnp.ones((batch, seq_len), bool)
    else:
        first = image_start.astype(jnp.int32)[:, None] + (num_image - 1)
        rows = first + jnp.arange(query_rows, dtype=jnp.int32)
        row_ok = (rows >= 0) & (rows < seq_len)
        rows = jnp.clip(rows, 0, seq_len - 1)
    num_rows = rows.shape[1]

    x = rms_norm(jax.lax.stop_gradient(hidden), norm_scale, rms_eps, cast_scale=False)
    x_rows = jnp.take_along_axis(x, rows[..., None], axis=1)
    q = (x_rows @ wq).reshape(batch, num_rows, num_kv_heads, groups, head_dim)
    k = (x @ wk).reshape(batch, seq_len, num_kv_heads, head_dim)
    q = apply_rope(q, *rope_cos_sin(jnp.take_along_axis(positions, rows, axis=1), inv_freq,
                                    rope_attention_scaling, q.dtype)).astype(jnp.float32)
    k = apply_rope(k, *rope_cos_sin(positions, inv_freq, rope_attention_scaling,
                                    k.dtype)).astype(jnp.float32)
    q = q * (1.0 / math.sqrt(head_dim))
    query_mask = jnp.take_along_axis(query_mask.astype(bool), rows, axis=1) & row_ok

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


# --------------------------------------------------------------------------
# Query sets (§3.3). Rows "after the image" are q >= image_start + num_image.

def _after_image(shape, image_start, num_image):
    rows = jnp.arange(shape[-1], dtype=jnp.int32)[None, :]
    start = image_start.astype(jnp.int32)[:, None]
    return (start >= 0) & (rows >= start + num_image)


def _last_valid_row(attention_mask):
    valid = attention_mask.astype(bool)
    rows = jnp.arange(valid.shape[-1], dtype=jnp.int32)
    last = jnp.max(jnp.where(valid, rows, -1), axis=-1, keepdims=True)
    return rows[None, :] == last


def official_query_mask(attention_mask, image_start, num_image: int):
    """Official ``all`` query set: rows from ``p_b + n`` to the end of the padded
    sequence, padding rows included (§3.3, D6). attention_mask [B, L] only sets
    the shape. Samples without an image (image_start < 0) get no rows."""
    return _after_image(attention_mask.shape, image_start, num_image)


def _with_fallback(primary, fallback, image_start):
    """Replace an empty primary set by the fallback set, per image-carrying sample."""
    empty = ~jnp.any(primary, axis=-1) & (image_start >= 0)
    return jnp.where(empty[:, None], fallback, primary), empty & jnp.any(fallback, axis=-1)


def eval_query_mask(attention_mask, image_start, num_image: int, queries: str = "all"):
    """Evaluation query sets (project default, valid rows only).

    ``all``: valid rows after the image block; ``last``: the last valid row.
    Returns (mask [B, L] bool, fell_back [B] bool): an empty ``all`` set falls
    back to ``last`` (D12) and is flagged.
    """
    last = _last_valid_row(attention_mask)
    if queries == "last":
        return last, jnp.zeros(last.shape[:1], bool)
    if queries != "all":
        raise ValueError(f"unknown query set {queries!r}; use 'all' or 'last' "
                         "(build 'salient' masks from the salient positions)")
    rows = _after_image(attention_mask.shape, image_start, num_image)
    return _with_fallback(rows & attention_mask.astype(bool), last, image_start)


def train_query_mask(labels, attention_mask, image_start, num_image: int, queries: str = "all"):
    """Training query sets from labels [B, L] (-100 = not supervised).

    ``all``: valid rows after the image block with label -100. ``last``: valid
    rows q with label[q] == -100 and label[q+1] != -100 (the token before each
    answer span) from the last image row on; the last image row is admitted
    because in the pretraining ``plain`` template the caption follows the
    image directly, and that is where ``all`` is empty and falls back (D12).
    Returns (mask [B, L] bool, fell_back [B] bool; True where the empty
    ``all`` set was replaced by a non-empty ``last`` set). A sample whose mask
    is still empty has no answer span after a non-answer token: pass it through.
    """
    valid = attention_mask.astype(bool)
    after = _after_image(labels.shape, image_start, num_image)
    from_last_image = _after_image(labels.shape, image_start, num_image - 1)
    unsupervised = labels == IGNORE_INDEX
    next_supervised = jnp.pad(~unsupervised[:, 1:], ((0, 0), (0, 1)))
    last = valid & from_last_image & unsupervised & next_supervised
    if queries == "last":
        return last, jnp.zeros(labels.shape[:1], bool)
    if queries != "all":
        raise ValueError(f"unknown query set {queries!r}; use 'all' or 'last' "
                         "(build 'salient' masks from the salient positions)")
    return _with_fallback(valid & after & unsupervised, last, image_start)


# --------------------------------------------------------------------------
# Drop and rebuild (§3.4, §3.6).

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


def reduced_lengths(lengths, passthrough, image_start, n_prev: int, n_new: int):
    """[B] lengths after a drop: ``len - (n_prev - n_new)`` unless passed through."""
    through = passthrough.astype(bool) | (image_start < 0)
    return jnp.where(through, lengths, lengths - (n_prev - n_new)).astype(jnp.int32)


def segment_length(lengths, passthrough, n_prev: int, n_new: int, bucket: int = 1) -> int:
    """Host-side static buffer length for the next segment (§3.6), rounded up to ``bucket``.

    ``passthrough`` [B] must also flag samples without an image.
    """
    lengths = np.asarray(lengths, np.int64)
    new = np.where(np.asarray(passthrough, bool), lengths, lengths - (n_prev - n_new))
    longest = int(new.max()) if new.size else 0
    return max(bucket, -(-longest // bucket) * bucket)


def drop_gather_index(keep, image_start, lengths, passthrough, *, n_prev: int, out_len: int):
    """Gather map of the drop: slot j of the new sequence reads old row src[b, j].

    keep [B, n_new] kept image indices (ascending, relative to image_start);
    image_start, lengths, passthrough [B] (image_start < 0 also passes through).
    Returns (src [B, out_len] int32, valid [B, out_len] bool); src is 0 on
    invalid slots. ``out_len`` must be >= every reduced length (rows beyond it
    would be cut).
    """
    n_new = keep.shape[-1]
    if n_new > n_prev:
        raise ValueError(f"cannot keep {n_new} of {n_prev} image tokens")
    slots = jnp.arange(out_len, dtype=jnp.int32)[None, :]
    start = image_start.astype(jnp.int32)[:, None]
    offset = jnp.clip(slots - start, 0, max(n_new - 1, 0))
    kept = (jnp.take_along_axis(keep.astype(jnp.int32), offset, axis=-1) if n_new
            else jnp.zeros_like(slots))
    src = jnp.where(slots < start, slots,
                    jnp.where(slots < start + n_new, start + kept, slots + (n_prev - n_new)))
    through = (passthrough.astype(bool) | (image_start < 0))[:, None]
    src = jnp.where(through, slots, src)
    new_len = reduced_lengths(lengths, passthrough, image_start, n_prev, n_new)
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
