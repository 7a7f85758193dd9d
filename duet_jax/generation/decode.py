"""One jitted prefill + KV-cached batched decoder for every family, with Stage-2 reduction.

Prefill runs the family's (reduced) forward and keeps every layer segment's KV
cache (docs/ALGORITHM.md §3.5-3.6): segment s holds `[B, L_s + T, KV, hd]` per
layer, prefill writes slots `[0, L_s)` (padding slots masked), decode step t
writes slot `L_s + t` for every sample. Image tokens dropped at a boundary are
simply absent from the later segments' caches. The loop (`decode`) is shared;
the one per-family rule is the RoPE position of decode step t in segment s,
`base_position[s] + t`:

* LLaVA-1.5, LLaVA-NeXT, Video-LLaVA (`generate_tokens`): the segment's valid
  prefill length (`positions='renumber'`) or the layer-0 valid length (`keep`);
* Qwen2.5-VL (`generate_qwen`): `next_position` (HF's rope delta) at every
  layer, the same id on all three M-RoPE axes.

Lengths count the same way for every family: `Generated.lengths[b]` is the
number of tokens sample b generated, its EOS included (what HF `generate`
returns); every slot after the EOS holds `pad_id`. The answer text is
`decode(tokens[b, :lengths[b]], skip_special_tokens=True)`. Decoding stops
once every sample has emitted EOS, or after `max_new_tokens`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from duet_jax.generation.sampling import sample_token
from duet_jax.models.common import slice_layers
from duet_jax.models.llava import LlavaModel
from duet_jax.models.qwen25vl import Qwen25VLModel
from duet_jax.models.qwen25vl_reduced import reduced_forward


class SegmentCache(NamedTuple):
    """With stacked layer params k/v are stacked, [n_layers, B, L_s + T, KV, hd]; with
    per-layer params (the inference layout) they are tuples of n_layers [B, L_s + T, KV,
    hd], each its own buffer in the decode loop's carry, written in place at each step
    (a stacked cache is rewritten whole at every step: at batch 8 and 640 rows that copy,
    not the matmuls, was most of a decode step)."""
    k: jax.Array              # [n_layers, B, L_s + T, KV, hd], or n_layers x [B, L_s + T, KV, hd]
    v: jax.Array
    prefill_valid: jax.Array  # [B, L_s] bool
    base_position: jax.Array  # [B] int32 position of decode step 0


class Generated(NamedTuple):
    tokens: jax.Array         # [B, max_new_tokens] int32, pad_id after EOS
    lengths: jax.Array        # [B] int32 generated tokens, EOS included
    forward: object           # the prefill forward (kept tokens, Stage-1 output), no KV caches
    logits: Optional[jax.Array] = None   # [B, T, V] float32 each token was picked from
                                         # (with_logits; zeros once every sample is done)


def last_token_logits(text, text_params: dict, hidden, valid) -> jax.Array:
    """hidden [B, L, D] before the final norm, valid [B, L] -> logits [B, V] float32
    of each sample's last valid row."""
    last = jnp.maximum(valid.sum(1) - 1, 0)
    h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
    return text.head(text_params, h_last)[:, 0]


def segment_caches(segments, base_positions, max_new_tokens: int, text_layers) -> tuple:
    """Prefill `Segment`s (with kv) + base positions [B] per segment -> SegmentCaches
    with `max_new_tokens` free slots (`SegmentCache`): one buffer per layer where the LM's
    layer params `text_layers` are per layer (a tuple, the inference layout), so a decode
    step writes each layer's new slot in place; stacked where they are stacked."""
    per_layer = isinstance(text_layers, tuple)

    def pad(kv):
        kv = jnp.pad(kv, ((0, 0), (0, 0), (0, max_new_tokens), (0, 0), (0, 0)))
        return tuple(kv[i] for i in range(kv.shape[0])) if per_layer else kv

    return tuple(SegmentCache(pad(seg.kv[0]), pad(seg.kv[1]), seg.valid,
                              base.astype(jnp.int32))
                 for seg, base in zip(segments, base_positions))


def decode_step(text, text_params: dict, tokens: jax.Array, caches: tuple, bounds: tuple, t,
                layers: tuple):
    """One token per sample: tokens [B] int -> (logits [B, V] float32, new caches).

    `bounds` are the static (lo, hi) layer ranges of the segments, `layers` their
    params sliced once outside the loop.
    """
    h = text.embed(text_params, tokens[:, None])
    new_caches = []
    for (lo, hi), c, seg_layers in zip(bounds, caches, layers):
        prefill_len = c.prefill_valid.shape[1]
        steps = jax.tree.leaves(c.k)[0].shape[-3] - prefill_len
        written = jnp.arange(steps)[None, :] <= t
        cache_valid = jnp.concatenate(
            [c.prefill_valid, jnp.broadcast_to(written, (tokens.shape[0], steps))], axis=1)
        positions = (c.base_position + t)[:, None]
        h, (k, v) = text.decode_layers(text_params, h, positions, cache_valid, (c.k, c.v),
                                       prefill_len + t, lo, hi, seg_layers)
        new_caches.append(c._replace(k=k, v=v))
    return text.head(text_params, h)[:, 0], tuple(new_caches)


def decode(text, text_params: dict, logits, caches: tuple, bounds: tuple, *,
           max_new_tokens: int, eos_id: int, pad_id: int, temperature: float, top_p: float,
           rng, with_logits: bool = False):
    """The decode loop. logits [B, V]: the prefill's last-token logits.

    Token t is sampled with `fold_in(rng, t)`. Returns (tokens [B, T], lengths [B]
    (EOS included), logits [B, T, V] or None).
    """
    b = logits.shape[0]
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    lengths = jnp.zeros((b,), jnp.int32)
    seen = (jnp.zeros((b, max_new_tokens) + logits.shape[1:], jnp.float32) if with_logits
            else jnp.zeros(()))
    if max_new_tokens == 0:
        return out, lengths, seen if with_logits else None
    layers = tuple(slice_layers(text_params["layers"], lo, hi) for lo, hi in bounds)

    def pick(t, logits, done, out, lengths, seen):
        token = sample_token(logits, jax.random.fold_in(rng, t), temperature, top_p)
        token = jnp.where(done, pad_id, token)
        if with_logits:
            seen = seen.at[:, t].set(logits)
        return (done | (token == eos_id), out.at[:, t].set(token),
                lengths + (~done).astype(jnp.int32), seen)

    def cond(carry):
        t, _, done = carry[:3]
        return (t < max_new_tokens - 1) & ~jnp.all(done)

    def body(carry):
        t, caches, done, out, lengths, seen = carry
        logits, caches = decode_step(text, text_params, out[:, t], caches, bounds, t, layers)
        return (t + 1, caches) + pick(t + 1, logits, done, out, lengths, seen)

    first = pick(0, logits, jnp.zeros((b,), bool), out, lengths, seen)
    carry = jax.lax.while_loop(cond, body, (jnp.int32(0), caches) + first)
    _, _, _, out, lengths, seen = carry
    return out, lengths, seen if with_logits else None


def _strip_kv(segments) -> tuple:
    """The prefill caches live on in the decode state only; do not return them twice."""
    return tuple(seg._replace(kv=None) for seg in segments)


@functools.partial(jax.jit, static_argnames=("model", "reduction", "max_new_tokens", "eos_id",
                                             "pad_id", "temperature", "top_p",
                                             "images_in_every_sample", "with_logits"))
def generate_tokens(model: LlavaModel, params: dict, input_ids, pixel_values, attention_mask, *,
                    reduction=None, max_new_tokens: int = 128, eos_id: int = 2, pad_id: int = 0,
                    temperature: float = 0.0, top_p: float = 1.0,
                    rng: Optional[jax.Array] = None, salient_mask=None,
                    images_in_every_sample: bool = True, with_logits: bool = False,
                    zoo_inputs=None) -> Generated:
    """LLaVA-1.5 / LLaVA-NeXT / Video-LLaVA (a `LlavaModel` or a view) generation.

    input_ids, attention_mask [B, L] (right padding); pixel_values as the model
    takes them; salient_mask [B, L] marks salient question tokens (the
    `salient` Stage-2 query set); zoo_inputs: what a zoo method reads per sample
    (LLaVA-1.5's CDPruner, `duet_jax.models.zoo`). Returns `Generated`.
    """
    rng = jax.random.key(0) if rng is None else rng
    extra = {} if zoo_inputs is None else {"zoo_inputs": zoo_inputs}
    fwd = model.forward(params, input_ids, pixel_values, attention_mask, reduction=reduction,
                        images_in_every_sample=images_in_every_sample, salient_mask=salient_mask,
                        return_kv=True, **extra)
    seq = fwd.sequence
    logits = last_token_logits(model.text, params["text"], seq.hidden, seq.valid)
    keep_positions = (reduction is not None and reduction.stage2 is not None
                      and reduction.stage2.positions == "keep")
    first_len = fwd.segments[0].valid.sum(1)
    bases = [first_len if keep_positions else seg.valid.sum(1) for seg in fwd.segments]
    caches = segment_caches(fwd.segments, bases, max_new_tokens, params["text"]["layers"])
    bounds = tuple((seg.lo, seg.hi) for seg in fwd.segments)
    tokens, lengths, seen = decode(
        model.text, params["text"], logits, caches, bounds, max_new_tokens=max_new_tokens,
        eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_p=top_p, rng=rng,
        with_logits=with_logits)
    return Generated(tokens, lengths, fwd._replace(segments=_strip_kv(fwd.segments)), seen)


@functools.partial(jax.jit, static_argnames=("model", "grids", "reduction", "max_new_tokens",
                                             "eos_id", "pad_id", "temperature", "top_p",
                                             "with_logits"))
def generate_qwen(model: Qwen25VLModel, params, input_ids, pixel_values, grids: tuple, positions,
                  next_position, attention_mask=None, *, reduction=None, max_new_tokens: int = 16,
                  eos_id: int = -1, pad_id: int = 0, temperature: float = 0.0, top_p: float = 1.0,
                  rng=None, with_logits: bool = False) -> Generated:
    """Qwen2.5-VL generation. input_ids [B, L] (right padding, `attention_mask` marks
    it), positions [3, B, L] and next_position [B] from `rope_index`. Returns `Generated`."""
    rng = jax.random.key(0) if rng is None else rng
    fwd = reduced_forward(model, params, input_ids, pixel_values, grids, positions,
                          attention_mask, reduction, return_kv=True)
    text = model.text
    logits = last_token_logits(text, params["text"], fwd.hidden, fwd.valid)
    caches = segment_caches(fwd.segments, [next_position] * len(fwd.segments), max_new_tokens,
                            params["text"]["layers"])
    bounds = tuple((seg.lo, seg.hi) for seg in fwd.segments)
    tokens, lengths, seen = decode(
        text, params["text"], logits, caches, bounds, max_new_tokens=max_new_tokens,
        eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_p=top_p, rng=rng,
        with_logits=with_logits)
    return Generated(tokens, lengths, fwd._replace(segments=_strip_kv(fwd.segments)), seen)
