"""VScan stage 1: local + global scan of CLIP's CLS attention, then merge (docs/BASELINES.md §5).

Local scan: the 24x24 grid cut into 6x6 windows, visited row-major; each window
keeps its ``k_w`` patches of highest shallow-layer (index 5) CLS attention.
Global scan: the deep layer's (index -2) CLS attention with the local picks set
to 0, top ``n_glob``. Every dropped patch is then averaged into the kept patch
of highest cosine (projector-output space), the kept patch counting once.
Stage 2 of VScan is DUET's Stage 2 with ``queries='last'`` and is not here.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from ._zoo import ascending, check_count, check_float, matmul_t

WINDOW = 6
SHALLOW_LAYER = 5
DEEP_LAYER = -2
LOCAL_RATIO = 0.5


def vscan_counts(T: int, num_image: int = 576, window: int = WINDOW) -> dict:
    """Static sizes: ``n_loc = int(0.5 T)``, ``k_w = n_loc // windows``,
    ``n_glob = T - n_loc``, kept ``K = windows * k_w + n_glob`` (T = 100 keeps 98)."""
    side = math.isqrt(num_image)
    if side * side != num_image or side % window:
        raise ValueError(f"VScan needs a square grid divisible into {window}x{window} windows; "
                         f"got {num_image} patches")
    windows = (side // window) ** 2
    n_loc = int(T * LOCAL_RATIO)
    k_w = n_loc // windows
    n_glob = T - n_loc
    return {"side": side, "windows": windows, "k_w": k_w, "n_glob": n_glob,
            "kept": windows * k_w + n_glob}


def window_local_scan(shallow: jax.Array, k_w: int, window: int = WINDOW) -> jax.Array:
    """[B, N] -> [B, windows * k_w] int32 grid indices: per window (row-major),
    its top ``k_w`` patches, descending."""
    b, n = shallow.shape
    side = math.isqrt(n)
    g = side // window
    win = shallow.reshape(b, g, window, g, window).transpose(0, 1, 3, 2, 4)
    local = lax.top_k(win.reshape(b, g, g, window * window), k_w)[1]    # [B, g, g, k_w]
    dy, dx = local // window, local % window
    wy = jnp.arange(g)[None, :, None, None]
    wx = jnp.arange(g)[None, None, :, None]
    grid = (wy * window + dy) * side + (wx * window + dx)
    return grid.reshape(b, g * g * k_w).astype(jnp.int32)


def merge_into_kept(projected: jax.Array, keep: jax.Array) -> tuple:
    """Fold every dropped token (ascending) into the kept token of highest cosine.

    projected: [B, N, D]; keep: [B, K] ascending distinct. Returns
    ``(merged [B, K, D], merge_target [B, N - K] int32 index into keep)``.
    """
    b, n, _ = projected.shape
    k = keep.shape[1]
    batch = jnp.arange(b)[:, None]
    kept_mask = jnp.zeros((b, n), bool).at[batch, keep].set(True)
    dropped = jnp.argsort(kept_mask, axis=-1, stable=True)[:, :n - k]   # ascending
    kept_x = jnp.take_along_axis(projected, keep[:, :, None], axis=1)
    drop_x = jnp.take_along_axis(projected, dropped[:, :, None], axis=1)
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    # one sample at a time: a batched dot with the normalisation fused in is slow on XLA:CPU
    cos = lax.map(lambda pair: matmul_t(unit(pair[0]), unit(pair[1])), (drop_x, kept_x))
    target = jnp.argmax(cos, axis=-1).astype(jnp.int32)
    sums = kept_x.at[batch, target].add(drop_x)
    counts = jnp.zeros((b, k), projected.dtype).at[batch, target].add(1.0)
    return sums / (1.0 + counts)[:, :, None], target


@functools.partial(jax.jit, static_argnames=("T",))
def vscan_stage1(cls_attn_layers: jax.Array, projected: jax.Array, T: int) -> dict:
    """VScan stage-1 selection and merge (docs/BASELINES.md §5).

    cls_attn_layers: [L, B, H, N] CLS-query attention to the patches of every
        CLIP layer (L = 24 for LLaVA-1.5; layers 5 and -2 are read).
    projected: [B, N, D] projector outputs (the merge space).
    T: static budget, ``1 <= T <= N``; ``T == N`` keeps everything unmerged.

    Returns ``{"keep": [B, K]`` ascending, ``"merged": [B, K, D]`` (rows in keep
    order), ``"local": [B, windows*k_w]``, ``"global": [B, n_glob]`` (descending),
    ``"merge_target": [B, N - K]`` (index into keep per dropped token, ascending
    token order)``}``; indices int32, K from :func:`vscan_counts`.
    """
    check_float("cls_attn_layers", cls_attn_layers)
    check_float("projected", projected)
    layers, b, _, n = cls_attn_layers.shape
    if projected.shape[:2] != (b, n):
        raise ValueError(f"projected {projected.shape} does not match attention {cls_attn_layers.shape}")
    if layers <= SHALLOW_LAYER:
        raise ValueError(f"VScan reads layer {SHALLOW_LAYER}; got {layers} layers")
    check_count("T", T, 1, n)
    return vscan_select(cls_attn_layers[SHALLOW_LAYER], cls_attn_layers[DEEP_LAYER], projected, T)


@functools.partial(jax.jit, static_argnames=("T",))
def vscan_select(shallow_attn: jax.Array, deep_attn: jax.Array, projected: jax.Array,
                 T: int) -> dict:
    """:func:`vscan_stage1` from the two layers it reads: shallow_attn, deep_attn
    [B, H, N] CLS-query attention of CLIP layers 5 and -2 (the LLaVA forward
    probes only those, docs/BASELINES.md §9); same returns."""
    b, n = projected.shape[:2]
    check_count("T", T, 1, n)
    c = vscan_counts(T, n)
    shallow = jnp.mean(shallow_attn, axis=1)                            # [B, N]
    deep = jnp.mean(deep_attn, axis=1)
    local = window_local_scan(shallow, c["k_w"])
    deep = deep.at[jnp.arange(b)[:, None], local].set(0)
    global_ = lax.top_k(deep, c["n_glob"])[1].astype(jnp.int32)
    if T == n:                      # the official code returns the tower output untouched
        keep = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        return {"keep": keep, "merged": projected, "local": local, "global": global_,
                "merge_target": jnp.zeros((b, 0), jnp.int32)}
    keep = ascending(jnp.concatenate([local, global_], axis=1))
    merged, target = merge_into_kept(projected, keep)
    return {"keep": keep, "merged": merged, "local": local, "global": global_,
            "merge_target": target}
