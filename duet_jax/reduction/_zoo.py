"""Small pieces shared by the method-zoo selection functions (docs/BASELINES.md §0).

Every matmul runs at ``Precision.HIGHEST`` so float32 inputs are not rounded
through TF32/bf16 on an accelerator (a flipped near-tie changes a selection),
and float64 inputs stay float64. Nothing here branches on array values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def matmul_t(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b^T`` over the last axis, batched over leading axes: [.., N, D] x [.., M, D] -> [.., N, M]."""
    return jnp.einsum("...nd,...md->...nm", a, b, precision=HIGHEST)


def unit_rows(x: jax.Array) -> jax.Array:
    """Rows divided by their L2 norm, no epsilon (``x / x.norm(dim=-1, keepdim=True)``)."""
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def unit_gram(x: jax.Array) -> jax.Array:
    """[B, N, D] -> [B, N, N] dot products of the unit rows (cosines), the rows
    normalised first as the official codes do. One sample at a time
    (``lax.map``): XLA:CPU fuses the normalisation into a batched dot and then
    runs ~3x slower at batch 8 than eight single-sample products."""
    return lax.map(lambda s: matmul_t(unit_rows(s), unit_rows(s)), x)


def at_least_float32(x: jax.Array) -> jax.Array:
    """x in float32 unless already wider: callers feed selections float32 or wider,
    since bf16/fp16 inputs flip near-ties (docs/BASELINES.md §0)."""
    return x if jnp.finfo(x.dtype).bits >= 32 else x.astype(jnp.float32)


def check_float(name: str, x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array, got {x.dtype}")


def check_count(name: str, value: int, low: int, high: int) -> int:
    """A static count in ``[low, high]`` (a Python int, not a traced value)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int (a static size), got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is outside [{low}, {high}]")
    return value


def ascending(idx: jax.Array) -> jax.Array:
    """Indices sorted ascending along the last axis, int32."""
    return jnp.sort(idx, axis=-1).astype(jnp.int32)
