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


def _bin_matrix(grid: int, side: int) -> np.ndarray:
    """[side, grid] 0/1 membership of every grid row (or column) in every bin."""
    m = np.zeros((side, grid), np.float64)
    for u, (lo, hi) in enumerate(pool_bins(grid, side)):
        m[u, lo:hi] = 1.0
    return m


@functools.partial(jax.jit, static_argnames=("k",))
def pool_tokens(features: jax.Array, k: int) -> dict:
    """``{"tokens": [B, side^2, D]}``: 2-D average pooling of the square patch
    grid of ``features`` [B, N, D] to ``side = floor(sqrt(k))`` cells a side
    (PyTorch ``adaptive_avg_pool2d`` bins), cells row-major. Separable: bin
    sums over rows, then over columns, then one division by the cell size."""
    check_float("features", features)
    b, n, d = features.shape
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"pool_tokens needs a square patch grid; got {n} patches")
    check_count("k", k, 1, n)
    side = pool_side(k)
    m = _bin_matrix(grid, side)
    bins = jnp.asarray(m, features.dtype)
    x = features.reshape(b, grid, grid, d)
    rows = jnp.einsum("ur,brcd->bucd", bins, x, precision=HIGHEST)
    cells = jnp.einsum("vc,bucd->buvd", bins, rows, precision=HIGHEST)
    size = np.outer(m.sum(axis=1), m.sum(axis=1)).reshape(-1)
    return {"tokens": cells.reshape(b, side * side, d) / jnp.asarray(size, features.dtype)[None, :, None]}
