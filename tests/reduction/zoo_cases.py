"""Shared input draws and run modes for the method-zoo tests (docs/BASELINES.md §8)."""
from __future__ import annotations

import contextlib

import jax
import numpy as np

MODES = ("jit", "eager")
F32_GAP = 1e-5      # a float32 draw is used only if every decision is won by more
F64_GAP = 1e-11     # float64 near-tie draws must still be decided by more than this


def run_mode(mode: str):
    """``jit``: the jitted public function; ``eager``: the same Python under
    ``jax.disable_jit()`` (loops run op by op)."""
    return jax.disable_jit() if mode == "eager" else contextlib.nullcontext()


def x64():
    """Scoped float64 (restores the previous setting on exit)."""
    return jax.enable_x64(True)


def gaussian(rng, *shape):
    return rng.normal(size=shape)


def clustered(rng, batch, n, d, clusters, eps):
    """Rows that are near-copies of a few centres (eps-sized offsets): distances
    and cosines between members of one cluster differ only at the eps^2 level,
    so most decisions are near-ties."""
    centres = rng.normal(size=(batch, clusters, d))
    which = rng.integers(0, clusters, size=(batch, n))
    base = np.take_along_axis(centres, which[:, :, None], axis=1)
    return base + eps * rng.normal(size=(batch, n, d))


def probabilities(rng, *shape, temperature=1.0):
    """Softmax rows over the last axis (attention-like, strictly positive)."""
    z = temperature * rng.normal(size=shape)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def assert_indices_equal(out: dict, want: dict, keys) -> None:
    """Each index output `key` of a selection is int32 and equal to the oracle's."""
    for key in keys:
        got = np.asarray(out[key])
        assert got.dtype == np.int32, key
        np.testing.assert_array_equal(got, want[key], err_msg=key)
