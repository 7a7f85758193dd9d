"""RoPE inverse frequencies for the `rope_scaling` types of HF Llama configs.

Inverse frequencies are computed on the host in float32 NumPy, mirroring
`transformers.modeling_rope_utils`; `dynamic` NTK scaling depends on the
sequence length, so its frequencies are computed in-graph from the largest
position (HF's stateless behaviour on a fresh forward). The cos/sin tables and the
rotation are `duet_jax.ops.rope_cos_sin` / `apply_rope`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.config import TextConfig
from duet_jax.ops import default_rope_inv_freq

SUPPORTED = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_parameters(cfg: TextConfig) -> tuple[np.ndarray, float]:
    """`(inv_freq [hd/2] float32, attention_scaling)` for a text config."""
    p = cfg.rope_params
    kind = p.get("rope_type", p.get("type", "default"))
    dim, base = cfg.head_dim, cfg.rope_theta
    if kind not in SUPPORTED:
        raise ValueError(f"rope_scaling type {kind!r} is not supported; use one of {SUPPORTED}")
    inv = default_rope_inv_freq(dim, base)
    if kind in ("default", "dynamic"):
        return inv, 1.0
    if kind == "linear":
        return (inv / np.float32(p["factor"])).astype(np.float32), 1.0
    if kind == "llama3":
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    return _yarn(p, dim, base, cfg.max_position_embeddings)


def _yarn(p: dict, dim: int, base: float, max_pos: int) -> tuple[np.ndarray, float]:
    orig = p["original_max_position_embeddings"]
    factor = p.get("factor") or max_pos / orig

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.get("attention_factor")
    if attn is None:
        ms, msa = p.get("mscale"), p.get("mscale_all_dim")
        attn = float(mscale(factor, ms) / mscale(factor, msa)) if ms and msa else mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def corr_dim(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extra_factor = 1 - ramp
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extra_factor) + (1.0 / pos_freqs) * extra_factor
    return inv.astype(np.float32), float(attn)


def inv_freq_for(cfg: TextConfig, positions: jax.Array) -> tuple[jax.Array, float]:
    """Inverse frequencies to use for `positions` ([B, L] int), in-graph for `dynamic`."""
    inv, scaling = rope_parameters(cfg)
    p = cfg.rope_params
    if p.get("rope_type", p.get("type")) != "dynamic":
        return jnp.asarray(inv), scaling
    dim, factor, max_pos = cfg.head_dim, p["factor"], cfg.max_position_embeddings
    seq_len = jnp.maximum(jnp.max(positions) + 1, max_pos).astype(jnp.float32)
    base = cfg.rope_theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    exps = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    return (1.0 / base ** exps).astype(jnp.float32), scaling

