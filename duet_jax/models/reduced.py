"""The Llama stack with Stage-2 drops between static segments.

Segment s runs layers `[l_s, l_{s+1})` on a sequence whose length is static
(ALGORITHM.md §3.6); between segments the image tokens are ranked and the
sequence is gathered into a shorter buffer, carrying labels, validity,
prompt rows and positions along (§3.4), so prefill, generation and training
share one code path.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence as Seq

import jax
import jax.numpy as jnp

from duet_jax.models.common import layer_at
from duet_jax.models.llama import LlamaModel
from duet_jax.models.rope import inv_freq_for
from duet_jax import reduction as red
from duet_jax.ops import IGNORE_INDEX


class Segment(NamedTuple):
    """What one segment's layers saw: enough to build its KV cache and decode after it."""
    lo: int
    hi: int
    valid: jax.Array          # [B, L_s] bool
    positions: jax.Array      # [B, L_s] int32
    kv: Optional[tuple]       # (k, v) each [hi-lo, B, L_s, KV, hd], when asked


def _query_mask(seq, image_start, n_prev: int, queries: str, train: bool):
    """[B, L] bool Stage-2 query rows (ALGORITHM.md §3.3)."""
    rows = jnp.arange(seq.valid.shape[1])[None, :]
    after_image = (image_start[:, None] >= 0) & (rows >= image_start[:, None] + n_prev)
    if train:
        if queries == "salient":
            # per-turn salient rows among the unsupervised rows after the image
            mask = seq.salient & seq.valid & after_image & (seq.labels == IGNORE_INDEX)
            last, _ = red.train_query_mask(seq.labels, seq.valid, image_start, n_prev, "last")
            return jnp.where(mask.any(1, keepdims=True), mask, last)
        mask, _ = red.train_query_mask(seq.labels, seq.valid, image_start, n_prev, queries)
        return mask
    # Evaluation: only prompt rows may be queries (generated tokens never re-rank).
    prompt_valid = seq.valid & seq.prompt
    if queries == "salient":
        last, _ = red.eval_query_mask(prompt_valid, image_start, n_prev, "last")
        return (seq.salient & prompt_valid & after_image) | last
    mask, _ = red.eval_query_mask(prompt_valid, image_start, n_prev, queries)
    return mask


def boundary_scores(text: LlamaModel, layer_params: dict, seq, score_hidden, qmask, image_start,
                    num_image: int, query_rows: Optional[int]):
    """`text_image_scores` with the q/k/norm weights of `layer_params` -> [B, num_image]."""
    cfg = text.config
    inv_freq, scaling = inv_freq_for(cfg, seq.positions)
    attn = layer_params["self_attn"]
    return red.text_image_scores(
        score_hidden, layer_params["input_layernorm"]["scale"].astype(text.dtype),
        attn["q_proj"]["kernel"].astype(text.dtype), attn["k_proj"]["kernel"].astype(text.dtype),
        seq.positions, seq.valid, qmask, image_start, num_image=num_image,
        num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
        rms_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, rope_inv_freq=inv_freq,
        rope_attention_scaling=scaling, query_rows=query_rows)


def drop_image_tokens(text: LlamaModel, layer_params: dict, seq, score_hidden, *, n_prev: int,
                      n_new: int, stage2, out_len: int, train: bool):
    """One boundary: rank `n_prev` image tokens with `layer_params`' q/k on `score_hidden`,
    keep `n_new`, gather `seq` into `out_len` slots. Returns (new seq, keep [B, n_new])."""
    image_start = jnp.where(seq.has_image, seq.image_start, -1)
    qmask = _query_mask(seq, image_start, n_prev, stage2.queries, train)
    # every query set starts at the last image row: score only that window
    scores = boundary_scores(text, layer_params, seq, score_hidden, qmask, image_start, n_prev,
                             query_rows=seq.valid.shape[1] - n_prev + 1)
    keep = red.keep_top_image_tokens(scores, n_new)
    # A sample with no query row (training without an answer span) passes through.
    passthrough = ~jnp.any(qmask, axis=-1)
    src, valid = red.drop_gather_index(keep, image_start, seq.valid.sum(-1), passthrough,
                                       n_prev=n_prev, out_len=out_len)
    return gather_sequence(seq, src, valid, stage2.positions), keep


def gather_sequence(seq, src, valid, positions_mode: str):
    """The sequence after a drop: every per-row field gathered through the map
    src [B, L'] (valid [B, L']), positions per `positions_mode`."""
    dropped = red.apply_drop(seq.hidden, src, valid, attention_mask=seq.valid, labels=seq.labels,
                             positions=seq.positions, positions_mode=positions_mode)
    prompt = jnp.take_along_axis(seq.prompt, src, axis=1) & valid
    return seq._replace(hidden=dropped.hidden, valid=dropped.attention_mask.astype(bool),
                        positions=dropped.positions, labels=dropped.labels, prompt=prompt)


def unreduced_run(text: LlamaModel, params: dict, seq, return_kv: bool):
    """Every layer, no drop: (seq, [one Segment], [])."""
    num_layers = text.config.num_hidden_layers
    h, kv = text.run_layers(params, seq.hidden, seq.positions, seq.valid, 0, num_layers,
                            return_kv=return_kv)
    return seq._replace(hidden=h), [Segment(0, num_layers, seq.valid, seq.positions, kv)], []


def check_scorable(text: LlamaModel) -> None:
    if text.config.attention_bias:
        raise ValueError("Stage 2 scoring assumes Llama q/k projections without bias; "
                         "this checkpoint has attention_bias=True")


def run_segment(text: LlamaModel, params: dict, seq, lo: int, hi: int, fastv: bool,
                return_kv: bool):
    """Layers lo..hi-1 -> (seq after them, hidden the next boundary ranks with, Segment).

    FastV ranks with layer hi-1's own attention, so it needs that layer's input.
    """
    mid = hi - 1 if fastv else hi
    h, kv = text.run_layers(params, seq.hidden, seq.positions, seq.valid, lo, mid,
                            return_kv=return_kv)
    score_hidden = h
    if fastv:
        h, kv2 = text.run_layers(params, h, seq.positions, seq.valid, mid, hi, return_kv=return_kv)
        kv = kv2 if kv is None else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), kv, kv2)
    return seq._replace(hidden=h), score_hidden, Segment(lo, hi, seq.valid, seq.positions, kv)


def run_language_model(text: LlamaModel, params: dict, seq, num_image: int, stage2,
                       images_in_every_sample: bool = True, *, train: bool = False,
                       segment_lengths: Optional[Seq[int]] = None, return_kv: bool = False):
    """Runs every decoder layer, dropping image tokens at the Stage-2 boundaries.

    seq: `duet_jax.models.llava.Sequence` entering layer 0; num_image: n_0.
    segment_lengths: static buffer length of each later segment (host-computed,
    §3.6); default: shrink by the dropped count when every sample has an image,
    else keep the length.
    Returns (final seq with hidden before the final norm, [Segment, ...], [keep, ...]).
    """
    num_layers = text.config.num_hidden_layers
    if stage2 is None:
        return unreduced_run(text, params, seq, return_kv)
    check_scorable(text)
    counts = stage2.image_counts(num_image)
    bounds = [0, *stage2.layers, num_layers]
    segments, kept = [], []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        last_segment = s == len(bounds) - 2
        boundary_run = not last_segment and counts[s] > 0
        fastv = boundary_run and stage2.method == "fastv"
        seq, score_hidden, segment = run_segment(text, params, seq, lo, hi, fastv, return_kv)
        segments.append(segment)
        if not boundary_run:
            continue
        n_prev, n_new = counts[s], counts[s + 1]
        if segment_lengths is not None:
            out_len = segment_lengths[s]
        elif images_in_every_sample and not train:
            out_len = seq.hidden.shape[1] - (n_prev - n_new)
        else:
            out_len = seq.hidden.shape[1]
        layer_idx = hi - 1 if fastv else hi
        layer_params = layer_at(params["layers"], layer_idx)
        seq, keep = drop_image_tokens(text, layer_params, seq, score_hidden, n_prev=n_prev,
                                      n_new=n_new, stage2=stage2, out_len=out_len, train=train)
        kept.append(keep)
    return seq, segments, kept
