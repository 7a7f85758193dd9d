"""Controls for the method zoo: seeded random selection and 2-D average pooling
(docs/BASELINES.md §7). Both act on the image rows at the LLM input."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._zoo import HIGHEST, ascending, check_count, check_float


@functools.partial(jax.jit, static_argnames=("batch", "k", "n"))
def random_select(key: jax.Array, batch: int, k: int, n: int = 576) -> dict:
    """``{"keep": [batch, k] int32}``: per sample ``b`` a uniform choice of ``k``
    of ``n`` patches without replacement from ``fold_in(key, b)``, ascending.
    Sample ``b`` depends only on ``(key, b)``, never on the batch size."""
    check_count("batch", batch, 1, 1 << 30)
    check_count("n", n, 1, 1 << 30)
    check_count("k", k, 1, n)

    def one(b):
        return jax.random.choice(jax.random.fold_in(key, b), n, (k,), replace=False)

    return {"keep": ascending(jax.vmap(one)(jnp.arange(batch)))}


def pool_side(k: int) -> int:
    """Grid side of :func:`pool_tokens`: ``floor(sqrt(k))`` (64 -> 8, 128 -> 11, 192 -> 13)."""
    return math.isqrt(k)


def pool_bins(grid: int, side: int) -> list:
    """``adaptive_avg_pool`` bins ``[floor(grid u / side), ceil(grid (u+1) / side))``."""
    return [((grid * u) // side, -((-grid * (u + 1)) // side)) for u in range(side)]


def _pool_matrix(grid: int, side: int) -> np.ndarray:
    """[side^2, grid^2] 0/1 membership of every patch in every cell (row-major)."""
    bins = pool_bins(grid, side)
    m = np.zeros((side * side, grid * grid), np.float64)
    for u, (r0, r1) in enumerate(bins):
        for v, (c0, c1) in enumerate(bins):
            for r in range(r0, r1):
                m[u * side + v, r * grid + c0:r * grid + c1] = 1.0
    return m


@functools.partial(jax.jit, static_argnames=("k",))
def pool_tokens(features: jax.Array, k: int) -> dict:
    """``{"tokens": [B, side^2, D]}``: 2-D average pooling of the square patch
    grid of ``features`` [B, N, D] to ``side = floor(sqrt(k))`` cells a side
    (PyTorch ``adaptive_avg_pool2d`` bins), cells row-major."""
    check_float("features", features)
    n = features.shape[1]
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"pool_tokens needs a square patch grid; got {n} patches")
    check_count("k", k, 1, n)
    m = _pool_matrix(grid, pool_side(k))
    sums = jnp.einsum("sn,bnd->bsd", jnp.asarray(m, features.dtype), features, precision=HIGHEST)
    counts = jnp.asarray(m.sum(axis=1), features.dtype)
    return {"tokens": sums / counts[None, :, None]}
