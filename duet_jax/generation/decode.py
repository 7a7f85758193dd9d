"""Jitted prefill + KV-cached batched decoding, with Stage-2 reduction.

Each layer segment keeps a cache of its own length (docs/ALGORITHM.md §3.5-3.6):
segment s holds `[B, L_s + T, KV, hd]` per layer, prefill writes slots
`[0, L_s)` (padding slots masked), decode step t writes slot `L_s + t` for
every sample. Image tokens dropped at a boundary are simply absent from the
later segments' caches. The decode RoPE position is the segment's valid
prefill length plus t (`renumber`) or the layer-0 length plus t (`keep`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from duet_jax.models.common import slice_layers
from duet_jax.models.llava import LlavaModel


class SegmentCache(NamedTuple):
    k: jax.Array            # [n_layers, B, L_s + T, KV, hd]
    v: jax.Array
    prefill_valid: jax.Array  # [B, L_s] bool
    base_position: jax.Array  # [B] int32 position of decode step 0


class DecodeState(NamedTuple):
    caches: tuple           # SegmentCache per segment (a pytree: it flows through while_loop)


def _pad_cache(kv: jax.Array, extra: int) -> jax.Array:
    return jnp.pad(kv, ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0)))


def prefill(model: LlavaModel, params: dict, input_ids, pixel_values, attention_mask, *,
            reduction=None, max_new_tokens: int, salient_mask=None,
            images_in_every_sample: bool = True):
    """Runs the (reduced) prompt forward.

    Returns (last-token logits [B, V] float32, state, static segment bounds, forward).
    """
    fwd = model.forward(params, input_ids, pixel_values, attention_mask, reduction=reduction,
                        images_in_every_sample=images_in_every_sample, salient_mask=salient_mask,
                        return_kv=True)
    seq = fwd.sequence
    last = jnp.maximum(seq.valid.sum(1) - 1, 0)
    h_last = jnp.take_along_axis(seq.hidden, last[:, None, None], axis=1)
    logits = model.text.head(params["text"], h_last)[:, 0]
    keep_positions = reduction is not None and reduction.stage2 is not None \
        and reduction.stage2.positions == "keep"
    first_len = fwd.segments[0].valid.sum(1).astype(jnp.int32)
    caches = []
    for seg in fwd.segments:
        k, v = seg.kv
        base = first_len if keep_positions else seg.valid.sum(1).astype(jnp.int32)
        caches.append(SegmentCache(_pad_cache(k, max_new_tokens), _pad_cache(v, max_new_tokens),
                                   seg.valid, base))
    bounds = tuple((seg.lo, seg.hi) for seg in fwd.segments)
    return logits, DecodeState(tuple(caches)), bounds, fwd


def segment_layers(params: dict, bounds: tuple) -> tuple:
    """Stacked layer params per segment, sliced once (not inside the decode loop)."""
    return tuple(slice_layers(params["text"]["layers"], lo, hi) for lo, hi in bounds)


def decode_step(model: LlavaModel, params: dict, tokens: jax.Array, state: DecodeState,
                bounds: tuple, t, layers: Optional[tuple] = None):
    """One token per sample: tokens [B] int -> (logits [B, V] float32, new state).

    `bounds` are the static (lo, hi) layer ranges of the segments; `layers` their
    pre-sliced params (`segment_layers`).
    """
    text = model.text
    layers = segment_layers(params, bounds) if layers is None else layers
    h = text.embed(params["text"], tokens[:, None])
    new_caches = []
    for (lo, hi), c, seg_layers in zip(bounds, state.caches, layers):
        prefill_len = c.prefill_valid.shape[1]
        steps = c.k.shape[2] - prefill_len
        written = jnp.arange(steps)[None, :] <= t
        cache_valid = jnp.concatenate(
            [c.prefill_valid, jnp.broadcast_to(written, (tokens.shape[0], steps))], axis=1)
        positions = (c.base_position + t)[:, None]
        h, (k, v) = text.decode_layers(params["text"], h, positions, cache_valid, (c.k, c.v),
                                       prefill_len + t, lo, hi, seg_layers)
        new_caches.append(c._replace(k=k, v=v))
    logits = text.head(params["text"], h)[:, 0]
    return logits, state._replace(caches=tuple(new_caches))


def sample_token(logits: jax.Array, key: Optional[jax.Array], temperature: float, top_p: float):
    """Greedy when temperature == 0 (static), else temperature + nucleus sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


class Generated(NamedTuple):
    tokens: jax.Array       # [B, max_new_tokens] int32, pad_id after EOS
    lengths: jax.Array      # [B] int32 generated tokens, EOS included
    forward: object         # the prefill Forward (kept tokens, Stage-1 output)


@functools.partial(jax.jit, static_argnames=("model", "reduction", "max_new_tokens", "eos_id",
                                             "pad_id", "temperature", "top_p",
                                             "images_in_every_sample"))
def generate_tokens(model: LlavaModel, params: dict, input_ids, pixel_values, attention_mask, *,
                    reduction=None, max_new_tokens: int = 128, eos_id: int = 2, pad_id: int = 0,
                    temperature: float = 0.0, top_p: float = 1.0,
                    rng: Optional[jax.Array] = None, salient_mask=None,
                    images_in_every_sample: bool = True) -> Generated:
    """Batched generation; stops when every sample has emitted EOS or after max_new_tokens.

    salient_mask [B, L] marks salient question tokens (the `salient` Stage-2 query set).
    """
    rng = jax.random.key(0) if rng is None else rng
    logits, state, bounds, fwd = prefill(model, params, input_ids, pixel_values, attention_mask,
                                 reduction=reduction, max_new_tokens=max_new_tokens,
                                 salient_mask=salient_mask,
                                 images_in_every_sample=images_in_every_sample)
    layers = segment_layers(params, bounds)
    b = input_ids.shape[0]
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    done = jnp.zeros((b,), bool)
    lengths = jnp.zeros((b,), jnp.int32)

    def cond(carry):
        t, _, _, done, _, _ = carry
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        t, logits, state, done, out, lengths = carry
        token = sample_token(logits, jax.random.fold_in(rng, t), temperature, top_p)
        token = jnp.where(done, pad_id, token)
        out = out.at[:, t].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (token == eos_id)
        logits, state = decode_step(model, params, token, state, bounds, t, layers)
        return t + 1, logits, state, done, out, lengths

    carry = (jnp.int32(0), logits, state, done, out, lengths)
    _, _, _, _, out, lengths = jax.lax.while_loop(cond, body, carry)
    # The prefill caches live on in the decode state only; do not return them twice.
    fwd = fwd._replace(segments=tuple(seg._replace(kv=None) for seg in fwd.segments))
    return Generated(out, lengths, fwd)
