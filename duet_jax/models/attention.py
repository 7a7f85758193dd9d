"""Softmax attention for the towers and the LM prefill: one entry point, `attend`.

Backends with a fused kernel (GPU, TPU) get `jax.nn.dot_product_attention`. XLA:CPU
has none: there every op runs over the whole tensor, so at batch 8 a layer's
[B, H, T, S] logits (tens of MB at 640 rows) stream through memory several times
(scale, mask, max, exp, sum, cast) and attention, not the matmuls, dominates the
prefill. `blocked_attention` is the flash-attention schedule written in XLA ops
instead: query blocks of 128 rows, and where a block's logits for the whole batch would
not fit in cache, one sample at a time (`lax.map`): in 192-row query blocks against all
keys while a sample's block logits fit in a core's L2 (the towers' 577 rows, the reduced
LM segments), else against key blocks with an online softmax, so each step's logits are
a [H, block, block] tile; with `causal`, key blocks past a query block's last row are
never computed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Block size (query and key rows) of the CPU attention; 0 turns it off. Read at trace time.
CPU_ATTENTION_BLOCK = 128
# A query block's logits for the whole batch up to this size stay in cache: the batch runs
# at once with one key tile per query block (`blocked_attention`).
CPU_LOGITS_BYTES = 4 << 20
# Above it, one sample at a time: in blocks of this many query rows against all keys
# while a sample's block logits [H, rows, S] fit in CPU_SAMPLE_LOGITS_BYTES (one core's
# L2), else in CPU_ATTENTION_BLOCK-square tiles with an online softmax. Measured on a
# 2-core EPYC against the tiles (median ms, batch 8): CLIP 577 rows, 4 heads 33 -> 26,
# the LM's 300 causal rows, 8 heads 19 -> 16; at 640 causal rows the tiles stay ahead.
CPU_SAMPLE_BLOCK = 192
CPU_SAMPLE_LOGITS_BYTES = 2 << 20
# The masked logit of jax.nn.dot_product_attention: finite, so a block whose keys are all
# masked rescales to exactly 0 once a row meets a valid key (exp(NEG - m) underflows).
NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def attend(q, k, v, mask, scale: float, *, causal: bool):
    """q [B, T, H, hd], k/v [B, S, KV, hd] (KV divides H), mask [B, 1, T, S] bool (True:
    may attend) or None -> [B, T, H, hd] in q's dtype. `causal`: the mask is causal
    (key <= query, T == S) and-ed with key validity, which lets the CPU path skip the
    blocks above the diagonal."""
    block = CPU_ATTENTION_BLOCK
    if jax.default_backend() == "cpu" and block > 0 and q.shape[1] > block:
        return blocked_attention(q, k, v, mask, scale, block, causal=causal)
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                        scale=scale)


def blocked_attention(q, k, v, mask, scale: float, block: int, *, causal: bool):
    """`attend`'s math (float32 logits and softmax statistics, probabilities cast to v's
    dtype for the value product) in `block` query rows at a time.

    Three plans of the same loop: when a query block's logits for the whole batch,
    [B, H, block, S], fit in `CPU_LOGITS_BYTES`, the batch runs at once and each query
    block takes all its keys in one tile (a plain softmax, whose gradient is the cheap
    one); above it, one sample at a time (`lax.map`): with all keys in one tile for
    `CPU_SAMPLE_BLOCK` query rows while a sample's [H, rows, S] logits fit in
    `CPU_SAMPLE_LOGITS_BYTES`, else in `block` x `block` tiles with an online softmax,
    so the working set stays a tile. `causal` asks for mask == causal &
    key-valid (what `causal_mask` builds): tiles above the diagonal are skipped, and each
    tile is masked by key validity (the mask's last row, which sees every key) and, on
    the diagonal, by causality from iotas. A query row whose keys are all masked averages
    the values of the tiles it visits instead of all keys (dot_product_attention's
    result); no caller has one (a right-padded row still sees its sample's first key)."""
    b, t, h, hd = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = h // kv
    if causal and (s != t or mask is None):
        raise ValueError(f"causal blocked attention needs its causal mask and as many keys as "
                         f"queries, got {t} queries and {s} keys")

    def samples(qs, ks, vs, ms, query_block: int, key_block: int):
        """[N, T, H, hd], [N, S, KV, hd] x2, [N, 1, T, S] or None -> [N, T, H, hd]. Head-
        major here (per sample, inside the loop, the transposes stay in cache), query rows
        grouped per KV head: a tile's two products are plain batched matmuls."""
        n = qs.shape[0]
        qs = qs.reshape(n, t, kv, g, hd).transpose(0, 2, 1, 3, 4)           # [N, KV, T, G, hd]
        ks, vs = ks.transpose(0, 2, 1, 3), vs.transpose(0, 2, 1, 3)        # [N, KV, S, hd]
        outs = []
        for lo in range(0, t, query_block):
            hi = min(t, lo + query_block)
            rows = (hi - lo) * g
            qb = qs[:, :, lo:hi].reshape(n, kv, rows, hd)
            m = l = acc = None
            for klo in range(0, hi if causal else s, key_block):
                khi = min(hi if causal else s, klo + key_block)
                logits = jnp.einsum("nkrd,nksd->nkrs", qb, ks[:, :, klo:khi],
                                    preferred_element_type=jnp.float32) * scale
                if causal:      # key validity [N, 1, S_b], and causality on the diagonal
                    allowed = ms[:, 0, -1:, klo:khi]
                    if khi > lo:
                        query = lo + jnp.arange(rows)[:, None] // g
                        allowed = allowed & (query >= jnp.arange(klo, khi)[None])
                    logits = jnp.where(allowed[:, None], logits, NEG)
                elif ms is not None:                                         # [N, rows, S_b]
                    allowed = jnp.repeat(ms[:, 0, lo:hi, klo:khi], g, axis=1)
                    logits = jnp.where(allowed[:, None], logits, NEG)
                m_new = logits.max(-1) if m is None else jnp.maximum(m, logits.max(-1))
                probs = jnp.exp(logits - m_new[..., None])
                value = jnp.einsum("nkrs,nksd->nkrd", probs.astype(vs.dtype),
                                   vs[:, :, klo:khi], preferred_element_type=jnp.float32)
                if m is None:   # the first tile: nothing to rescale
                    l, acc = probs.sum(-1), value
                else:
                    rescale = jnp.exp(m - m_new)
                    l = l * rescale + probs.sum(-1)
                    acc = acc * rescale[..., None] + value
                m = m_new
            outs.append((acc / l[..., None]).reshape(n, kv, hi - lo, g, hd))
        out = jnp.concatenate(outs, axis=2)                               # [N, KV, T, G, hd]
        return out.transpose(0, 2, 1, 3, 4).reshape(n, t, h, hd).astype(q.dtype)

    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if mask is not None:
        mask = jnp.broadcast_to(mask, (b, 1, t, s))
    fits = b * h * min(block, t) * s * 4 <= CPU_LOGITS_BYTES
    if fits or b == 1:
        return samples(q, k, v, mask, block, max(block, s) if fits else block)
    rows = min(CPU_SAMPLE_BLOCK, t)
    # a sample's block logits stay in L2: all keys at once; else the online tiles
    blocks = (rows, s) if h * rows * s * 4 <= CPU_SAMPLE_LOGITS_BYTES else (block, block)

    def one(x):         # a None mask is an empty subtree: lax.map passes it through
        return samples(*(None if a is None else a[None] for a in x), *blocks)[0]
    return jax.lax.map(one, (q, k, v, mask))
