"""Greedy / sampled decoding for Qwen2.5-VL through per-segment KV caches.

Prefill runs `reduced_forward` (Stage 1 + Stage 2 when given) and keeps every
segment's cache: layers of segment s only ever see the tokens that survived up
to s (docs/ALGORITHM.md §3.5). Decode step t writes slot `L_s + t` of each segment's
cache; its M-RoPE id is `next_position + t` on all three axes (HF rope deltas;
positions are kept, never renumbered).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from duet_jax.models.common import slice_layers
from duet_jax.models.qwen25vl import Qwen25VLModel
from duet_jax.models.qwen25vl_reduced import reduced_forward


class QwenGenerated(NamedTuple):
    tokens: jax.Array     # [B, T] generated ids (pad after eos)
    lengths: jax.Array    # [B] tokens before (excluding) eos
    logits: object = None  # [B, T, V] float32 logits each token was picked from (with_logits)


def _pad(kv, extra):
    return jnp.pad(kv, ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0)))


def _pick(logits, temperature, top_p, rng):
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cutoff = jnp.take_along_axis(sorted_logits, jnp.sum(cum < top_p, axis=-1, keepdims=True), axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "grids", "reduction", "max_new_tokens",
                                             "eos_id", "pad_id", "temperature", "top_p",
                                             "with_logits"))
def generate_qwen(model: Qwen25VLModel, params, input_ids, pixel_values, grids: tuple, positions,
                  next_position, attention_mask=None, *, reduction=None, max_new_tokens: int = 16,
                  eos_id: int = -1, pad_id: int = 0, temperature: float = 0.0, top_p: float = 1.0,
                  rng=None, with_logits: bool = False) -> QwenGenerated:
    """input_ids [B, L] (left-aligned, `attention_mask` marks padding), positions [3, B, L]
    and next_position [B] from `rope_index`. Returns QwenGenerated."""
    text = model.text
    rng = jax.random.key(0) if rng is None else rng
    fwd = reduced_forward(model, params, input_ids, pixel_values, grids, positions,
                          attention_mask, reduction, return_kv=True)
    last = jnp.maximum(fwd.valid.sum(1) - 1, 0)
    h_last = jnp.take_along_axis(fwd.hidden, last[:, None, None], axis=1)
    logits = text.head(params["text"], h_last)[:, 0]
    caches = tuple((_pad(s.kv[0], max_new_tokens), _pad(s.kv[1], max_new_tokens)) for s in fwd.segments)
    layers = tuple(slice_layers(params["text"]["layers"], s.lo, s.hi) for s in fwd.segments)
    b = input_ids.shape[0]
    rng, sub = jax.random.split(rng)
    first = _pick(logits, temperature, top_p, sub)

    def step(t, state):
        tokens, done, caches, rng, seen = state
        tok = tokens[:, t]
        h = text.embed(params["text"], tok[:, None])
        pos = (next_position + t)[:, None]
        new_caches = []
        for seg, (k, v), lay in zip(fwd.segments, caches, layers):
            length = seg.valid.shape[1]
            fresh = jnp.arange(max_new_tokens)[None] <= t
            cache_valid = jnp.concatenate([seg.valid, jnp.broadcast_to(fresh, (b, max_new_tokens))], 1)
            h, (k, v) = text.decode_layers(params["text"], h, pos, cache_valid, (k, v),
                                           length + t, seg.lo, seg.hi, layers=lay)
            new_caches.append((k, v))
        rng, sub = jax.random.split(rng)
        step_logits = text.head(params["text"], h)[:, 0]
        if with_logits:
            seen = seen.at[:, t + 1].set(step_logits)
        nxt = _pick(step_logits, temperature, top_p, sub)
        done = done | (tok == eos_id)
        nxt = jnp.where(done, pad_id, nxt)
        return tokens.at[:, t + 1].set(nxt), done, tuple(new_caches), rng, seen

    tokens = jnp.full((b, max_new_tokens + 1), pad_id, jnp.int32).at[:, 0].set(first)
    seen = (jnp.zeros((b, max_new_tokens) + logits.shape[1:], jnp.float32).at[:, 0].set(logits)
            if with_logits else jnp.zeros(()))
    tokens, _, _, _, seen = jax.lax.fori_loop(0, max_new_tokens - 1, step,
                                              (tokens, jnp.zeros(b, bool), caches, rng, seen))
    tokens = tokens[:, :max_new_tokens]
    is_eos = tokens == eos_id
    lengths = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1), max_new_tokens)
    return QwenGenerated(tokens, lengths.astype(jnp.int32), seen if with_logits else None)
