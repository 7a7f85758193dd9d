"""DART: duplication-aware pruning inside the LLM (docs/BASELINES.md §2).

Per sample, before decoder layer ``K`` (2 by default), from layer ``K - 1``:
pivots are the image and text tokens with the largest L1 norm of their
post-RoPE keys; each pivot, visited in CPython ``set`` iteration order, takes
the ``token_topk`` still-unclaimed image tokens least similar (cosine of the
final-norm hidden states) to it. Kept: the image pivots plus every pick.

The visiting order matters (later pivots choose from what earlier ones left).
The official code iterates ``list(set(image_pivots + text_pivots))``; for small
non-negative ints ``hash(i) == i`` and the order is the slot order of CPython's
open-addressing table, which :func:`pyset_order` reproduces with static table
sizes (the resize points depend only on how many keys were inserted) and a
small ``while_loop`` per insert for the data-dependent probing.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from ._zoo import HIGHEST, ascending, check_count, check_float

PYSET_MINSIZE = 8       # CPython's PySet_MINSIZE
LINEAR_PROBES = 9       # setobject.c LINEAR_PROBES
PERTURB_SHIFT = 5       # setobject.c PERTURB_SHIFT
_EMPTY = -1


def dart_token_topk(num_pivots: int, max_num_trunction: Optional[int] = None,
                    reduction_ratio: float = 0.778, num_image: int = 576) -> int:
    """Picks per pivot: ``floor(B / P)``, ``B = max_num_trunction`` or, unset,
    ``num_image * (1 - reduction_ratio)`` (128 / 8 -> 16; 0.778 -> 15)."""
    budget = (max_num_trunction if max_num_trunction is not None
              else num_image * (1.0 - float(reduction_ratio)))
    if budget < 0 or num_pivots < 1:
        raise ValueError(f"DART budget {budget} / {num_pivots} pivots is not a valid split")
    return int(budget // num_pivots)


def dart_kept_count(n_pivot_image: int, n_pivot_text: int, token_topk: int) -> int:
    """Image tokens DART keeps: ``p_img + (p_img + p_txt) * token_topk`` (64 -> 68)."""
    return n_pivot_image + (n_pivot_image + n_pivot_text) * token_topk


def pyset_table_sizes(count: int) -> list:
    """Table size after each of ``count`` inserts of distinct keys into an empty
    CPython set: grow when ``5 * fill >= 3 * mask`` to the smallest power of
    two above ``4 * used``."""
    size, sizes = PYSET_MINSIZE, []
    for n in range(1, count + 1):
        if 5 * n >= 3 * (size - 1):
            new = PYSET_MINSIZE
            while new <= 4 * n:
                new <<= 1
            size = new
        sizes.append(size)
    return sizes


def _pyset_insert(table: jax.Array, key: jax.Array) -> jax.Array:
    """Insert a non-negative int ``key`` (absent) into ``table`` ([size] int32,
    ``-1`` = empty) the way setobject.c probes: slots ``i .. i+9`` when they fit
    below the mask (only ``i`` otherwise), then ``perturb >>= 5``,
    ``i = (5 i + 1 + perturb) & mask``."""
    size = table.shape[0]
    mask = size - 1
    offsets = jnp.arange(LINEAR_PROBES + 1)

    def slot_of(i):
        slots = i + offsets
        usable = (offsets == 0) | (i + LINEAR_PROBES <= mask)
        free = usable & (table[jnp.minimum(slots, mask)] == _EMPTY)
        return jnp.where(jnp.any(free), slots[jnp.argmax(free)], -1)

    def cond(state):
        return state[2] < 0

    def body(state):
        i, perturb, _ = state
        perturb = perturb >> PERTURB_SHIFT
        i = (5 * i + 1 + perturb) & mask
        return i, perturb, slot_of(i)

    key = key.astype(jnp.int32)
    i0 = key & mask
    _, _, slot = lax.while_loop(cond, body, (i0, key, slot_of(i0)))
    return table.at[slot].set(key)


@jax.jit
def pyset_order(keys: jax.Array) -> jax.Array:
    """[P] distinct non-negative int32 -> [P]: the order ``list(set(keys))``
    iterates them in (CPython, ``hash(i) == i``). Jittable; P is static."""
    count = keys.shape[0]
    keys = keys.astype(jnp.int32)
    sizes = pyset_table_sizes(count)
    table, size, start = jnp.full((PYSET_MINSIZE,), _EMPTY, jnp.int32), PYSET_MINSIZE, 0
    for n in range(count + 1):
        if n == count or sizes[n] != size:
            # keys[start .. n] go into a table of this size; insert n triggers the grow
            stop = min(n + 1, count)
            table = lax.fori_loop(start, stop, lambda t, tab: _pyset_insert(tab, keys[t]), table)
            start = stop
            if n < count:
                table = _pyset_grow(table, sizes[n])
                size = sizes[n]
    (slots,) = jnp.nonzero(table != _EMPTY, size=count, fill_value=0)
    return table[slots]


def _pyset_grow(old: jax.Array, new_size: int) -> jax.Array:
    """Rebuild at ``new_size`` slots, reinserting the old entries in slot order."""
    def body(s, table):
        return lax.cond(old[s] != _EMPTY, _pyset_insert, lambda t, _: t, table, old[s])
    return lax.fori_loop(0, old.shape[0], body, jnp.full((new_size,), _EMPTY, jnp.int32))


def _unit_rows_eps(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Rows over ``max(||x||, eps)``, as ``torch.nn.functional.cosine_similarity`` clamps."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("image_start", "n_image", "n_pivot_image",
                                             "n_pivot_text", "token_topk"))
def dart_select(hidden: jax.Array, keys: jax.Array, *, image_start: int = 35,
                n_image: int = 576, n_pivot_image: int = 4, n_pivot_text: int = 4,
                token_topk: int, valid_length: Optional[jax.Array] = None,
                row_offset: Optional[jax.Array] = None) -> dict:
    """DART selection for one sample (docs/BASELINES.md §2).

    hidden: [S, D] layer ``K-1`` output through the final norm.
    keys:   [H, S, hd] layer ``K-1`` keys after RoPE (KV heads).
    image_start, n_image: the image rows ``[a, a + n_image)`` of the sequence.
    token_topk: static picks per pivot (:func:`dart_token_topk`).
    valid_length: optional scalar (may be traced): rows ``>= valid_length`` are
        padding and never become text pivots (the official code runs batch 1,
        unpadded). Default: every row is valid.
    row_offset: optional scalar (may be traced): row ``s`` of the inputs is
        sequence position ``s + row_offset`` (a caller that shifted each sample
        so its image starts at a static row). The visiting order hashes the
        pivots' sequence positions, so it is taken on those; returned indices
        stay row indices. Default 0.

    Returns ``{"keep": [p_img + P*token_topk] int32`` ascending absolute
    positions, ``"image_pivots": [p_img]``, ``"text_pivots": [p_txt]`` (each by
    descending key L1 norm), ``"pivot_order": [P]`` (visiting order),
    ``"picks": [P, token_topk]`` (per visited pivot, lowest cosine first)``}``.
    """
    check_float("hidden", hidden)
    check_float("keys", keys)
    seq = hidden.shape[0]
    if keys.shape[1] != seq:
        raise ValueError(f"keys {keys.shape} and hidden {hidden.shape} disagree on S")
    a = check_count("image_start", image_start, 0, seq)
    n = check_count("n_image", n_image, 1, seq - a)
    b = a + n
    check_count("n_pivot_image", n_pivot_image, 0, n)
    check_count("n_pivot_text", n_pivot_text, 0, seq - b)
    pivots_total = n_pivot_image + n_pivot_text
    check_count("n_pivot_image + n_pivot_text", pivots_total, 1, seq)
    check_count("token_topk", token_topk, 0, n)
    if n - n_pivot_image < pivots_total * token_topk:
        raise ValueError(f"DART needs {pivots_total} x {token_topk} picks but only "
                         f"{n - n_pivot_image} image tokens are not pivots")

    l1 = jnp.sum(jnp.abs(keys), axis=(0, 2))                           # [S]
    image_pivots = (lax.top_k(l1[a:b], n_pivot_image)[1] + a).astype(jnp.int32)
    text_l1 = l1[b:]
    if valid_length is not None:
        rows = jnp.arange(b, seq)
        text_l1 = jnp.where(rows < valid_length, text_l1, -jnp.inf)
    text_pivots = (lax.top_k(text_l1, n_pivot_text)[1] + b).astype(jnp.int32)
    pivots = jnp.concatenate([image_pivots, text_pivots])
    if row_offset is None:
        pivot_order = pyset_order(pivots)
    else:
        offset = jnp.asarray(row_offset, jnp.int32)
        pivot_order = pyset_order(pivots + offset) - offset

    hn = _unit_rows_eps(hidden)
    image_hn = hn[a:b]                                                 # [n, D]
    pool = jnp.ones((n,), bool).at[image_pivots - a].set(False)

    def visit(t, carry):
        pool, picks = carry
        cos = jnp.einsum("nd,d->n", image_hn, hn[pivot_order[t]], precision=HIGHEST)
        cand = jnp.where(pool, -cos, -jnp.inf)                         # lowest cosine first
        chosen = lax.top_k(cand, token_topk)[1]
        return pool.at[chosen].set(False), picks.at[t].set((chosen + a).astype(jnp.int32))

    picks = jnp.zeros((pivots_total, token_topk), jnp.int32)
    if token_topk > 0:
        _, picks = lax.fori_loop(0, pivots_total, visit, (pool, picks))
    keep = ascending(jnp.concatenate([image_pivots, picks.reshape(-1)]))
    return {"keep": keep, "image_pivots": image_pivots, "text_pivots": text_pivots,
            "pivot_order": pivot_order, "picks": picks}
