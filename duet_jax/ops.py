"""Array operations shared by `duet_jax.models` and `duet_jax.reduction`.

One home for the pieces both layers compute the same way (HF conventions):
RMSNorm and rotate-half RoPE (tables and rotation); the label value of an
unsupervised token lives in `duet_jax.labels` (no JAX). Nothing here imports a
model or a reduction module.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, *, cast_scale: bool = True) -> jax.Array:
    """HF LlamaRMSNorm over the last axis: float32 statistics, cast back to `x.dtype`,
    times the weight `scale` [D].

    cast_scale=True (the modules): the weight is cast to `x.dtype` first, so the
    result has `x.dtype`. cast_scale=False: HF's literal `weight * normed`, whose
    dtype is the promotion of the two (what `text_image_scores` documents).
    """
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    return (scale.astype(x.dtype) if cast_scale else scale) * y.astype(x.dtype)


def default_rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """[head_dim/2] float32 `1 / theta^(2i/hd)`: un-scaled RoPE, on the host as HF does."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq, scaling: float, dtype) -> tuple:
    """positions [B, L] int, inv_freq [hd/2] -> cos, sin [B, L, hd] in `dtype`
    (rotate-half tables, times HF's attention scaling)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (jnp.cos(emb) * scaling).astype(dtype), (jnp.sin(emb) * scaling).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, *, float32: bool = False) -> jax.Array:
    """Rotate-half RoPE. x [*R, ..., hd] with cos/sin [*R, hd] (R: the row axes, e.g.
    [B, L] or [N]); cos/sin broadcast over the axes of x between R and hd (heads).

    float32=True rotates in float32 and casts back (HF's vision RoPE); otherwise
    the arithmetic runs in the dtypes of x and cos/sin (HF's text RoPE).
    """
    shape = cos.shape[:-1] + (1,) * (x.ndim - cos.ndim) + cos.shape[-1:]
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    xr = x.astype(jnp.float32) if float32 else x
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    out = xr * cos + rotated * sin
    return out.astype(x.dtype) if float32 else out


# Host-side (Python ints): the AnyRes pinpoint choice, used by the LLaVA-NeXT layout
# (models/anyres.py) and by the resolution buckets of the data pipeline.
def select_best_resolution(size_hw: Tuple[int, int], pinpoints: Sequence) -> Tuple[int, int]:
    """transformers' `select_best_resolution`: most effective, then least wasted pixels."""
    oh, ow = (int(v) for v in size_hw)
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (h, w), eff, waste
    return best
