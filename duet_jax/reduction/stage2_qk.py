"""Stage-2 scores from already projected and rotated queries/keys (docs/ALGORITHM.md §3.2).

Models whose scoring layer differs from Llama's (q/k biases, M-RoPE) compute
`q`, `k` themselves with the next layer's weights and hand them here; the
mask, softmax, GQA head mapping (docs/ALGORITHM.md §3.8) and averaging are the same as
`stage2.text_image_scores`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def image_scores_from_qk(q: jax.Array, k: jax.Array, valid: jax.Array, query_mask: jax.Array,
                         image_start: jax.Array, *, num_image: int) -> jax.Array:
    """Mean attention of the query rows onto the image columns.

    q [B, L, H, hd], k [B, L, KV, hd] (RoPE applied, unscaled), valid [B, L] (1 = real),
    query_mask [B, L] bool, image_start [B] int (first image row; < 0: no image).
    Query head h uses key head h // (H/KV). Causal + padding mask, float32 softmax
    over all keys, mean over heads and query rows.
    Returns [B, num_image] float32 (0 without an image or without query rows).
    """
    b, length, heads, hd = q.shape
    kv = k.shape[2]
    if heads % kv:
        raise ValueError(f"{heads} query heads do not group over {kv} key heads")
    qg = q.astype(jnp.float32).reshape(b, length, kv, heads // kv, hd) * hd ** -0.5
    logits = jnp.einsum("bqkgd,blkd->bkgql", qg, k.astype(jnp.float32))
    rows = jnp.arange(length)
    allowed = (rows[None, :] <= rows[:, None])[None] & valid.astype(bool)[:, None, :]
    probs = jax.nn.softmax(jnp.where(allowed[:, None, None], logits, -jnp.inf), axis=-1)
    probs = jnp.where(allowed[:, None, None], probs, 0.0)
    head_mean = jnp.mean(probs, axis=(1, 2))                               # [B, L, L]
    qm = query_mask.astype(jnp.float32)
    per_key = jnp.einsum("bq,bql->bl", qm, head_mean) / jnp.maximum(qm.sum(-1, keepdims=True), 1.0)
    cols = image_start.astype(jnp.int32)[:, None] + jnp.arange(num_image, dtype=jnp.int32)
    ok = (image_start[:, None] >= 0) & (cols < length)
    return jnp.where(ok, jnp.take_along_axis(per_key, jnp.clip(cols, 0, length - 1), axis=1), 0.0)
