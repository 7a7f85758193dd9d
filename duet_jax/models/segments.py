"""The Stage-2 segment runner of every family: the LM stack with drops between static segments.

Segment s runs layers `[l_s, l_{s+1})` on a sequence whose length is static
(docs/ALGORITHM.md §3.6); between segments the image tokens are ranked and the
sequence is gathered into a shorter buffer, carrying labels, validity, prompt
rows and positions along (docs/ALGORITHM.md §3.4), so prefill, generation and training share one
code path.

Counts are host-known Python ints, one per sample (`image_counts`,
`[B, S+1]`): LLaVA-1.5 and Video-LLaVA have one `n_0` for the batch, LLaVA-NeXT
one per sample (AnyRes grids differ). Equal counts take the fast path: scoring
reads only the window of query rows from the last image row on, and the keep
is a plain top-k. Unequal counts use the batch maxima with each sample's slots
masked (`keep_top_per_sample`, the per-sample gather map), and buffer lengths
`L_s = L_{s-1} - min_b (n_{s-1}[b] - n_s[b])` (>= every sample's new length).

Family hooks: the text model's `stage2_scores` (Llama: q/k without bias and
1-D RoPE; Qwen2: biased q/k and M-RoPE) ranks, and the positions' shape
selects their gather: `[B, L]` ids (renumbered or kept) or M-RoPE `[3, B, L]`
ids (kept). FastV ranks with layer `hi - 1`'s own attention on its own input.
DART (docs/BASELINES.md §2, §9) chooses with layer `hi - 1`'s post-RoPE keys and
its output through the final norm, one sample at a time, and keeps positions.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence as Seq

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.common import layer_at
from duet_jax.ops import rms_norm
from duet_jax.reduction import (apply_drop, at_least_float32, dart_select, dart_topk,
                                drop_gather_index, keep_top_per_sample, stage2_query_mask)


class Sequence(NamedTuple):
    """A batch of LM inputs; every field is right-padded to one static length L."""
    hidden: jax.Array       # [B, L, D]
    valid: jax.Array        # [B, L] bool
    positions: jax.Array    # [B, L] int32 RoPE ids, or [3, B, L] M-RoPE ids
    labels: jax.Array       # [B, L] int32, IGNORE_INDEX where not supervised
    image_start: jax.Array  # [B] int32 index of the first image token (0 if none)
    has_image: jax.Array    # [B] bool
    prompt: jax.Array       # [B, L] bool rows of the prompt (Stage-2 query candidates at inference)
    salient: jax.Array      # [B, L] bool salient question tokens (the `salient` query set)


class Segment(NamedTuple):
    """What one segment's layers saw: enough to build its KV cache and decode after it."""
    lo: int
    hi: int
    valid: jax.Array          # [B, L_s] bool
    positions: jax.Array      # [B, L_s] int32 (or [3, B, L_s] M-RoPE)
    kv: Optional[tuple]       # (k, v) each [hi-lo, B, L_s, KV, hd], when asked


def image_counts(stage2, num_image, batch: int) -> np.ndarray:
    """[B, S+1] int64: image tokens of each sample in each segment. num_image: n_0,
    one Python int for the batch or one per sample."""
    n0 = [num_image] * batch if np.ndim(num_image) == 0 else list(num_image)
    if len(n0) != batch:
        raise ValueError(f"{len(n0)} image-token counts for a batch of {batch}")
    return np.array([stage2.image_counts(int(n)) for n in n0], np.int64)


def gather_sequence(seq: Sequence, src, valid, positions_mode: str) -> Sequence:
    """The sequence after a drop: every per-row field gathered through the map
    src [B, L'] (valid [B, L']), positions per `positions_mode`."""
    mrope = seq.positions.ndim == 3
    if mrope and positions_mode != "keep":
        raise ValueError("M-RoPE positions [3, B, L] can only be kept (positions='keep')")
    dropped = apply_drop(seq.hidden, src, valid, attention_mask=seq.valid, labels=seq.labels,
                         positions=None if mrope else seq.positions,
                         positions_mode="renumber" if mrope else positions_mode)
    positions = dropped.positions
    if mrope:
        positions = jnp.where(valid[None], jnp.take_along_axis(seq.positions, src[None], axis=2), 0)
    prompt = jnp.take_along_axis(seq.prompt, src, axis=1) & valid
    salient = jnp.take_along_axis(seq.salient, src, axis=1) & valid
    return seq._replace(hidden=dropped.hidden, valid=dropped.attention_mask.astype(bool),
                        positions=positions, labels=dropped.labels, prompt=prompt,
                        salient=salient)


def drop_image_tokens(text, layer_params: dict, seq: Sequence, score_hidden, *,
                      n_prev: np.ndarray, n_new: np.ndarray, stage2, out_len: int,
                      train: bool):
    """One boundary: rank each sample's n_prev[b] image tokens with `layer_params`' q/k
    on `score_hidden`, keep n_new[b], gather `seq` into `out_len` slots.

    n_prev, n_new: host ints [B]. Returns (new seq, keep [B, max n_new]); keep slots
    past a sample's count hold the block width (they select nothing).
    """
    image_start = jnp.where(seq.has_image, seq.image_start, -1)
    width = int(n_prev.max())
    uniform = bool(np.all(n_prev == width))
    if uniform:
        n_prev, n_new = width, int(n_new[0])
    block = n_prev if uniform else jnp.asarray(n_prev, jnp.int32)[:, None]
    qmask = stage2_query_mask(seq.valid, seq.labels, seq.prompt, seq.salient, image_start, block,
                              stage2.queries, train)
    # every query set starts at the last image row: with one block length, score only
    # that window (per sample it starts at a different row, so score every row)
    scores = text.stage2_scores(layer_params, score_hidden, seq.positions, seq.valid, qmask,
                                image_start, num_image=width,
                                query_rows=seq.valid.shape[1] - width + 1 if uniform else None)
    keep = keep_top_per_sample(scores, np.broadcast_to(n_prev, image_start.shape),
                               np.broadcast_to(n_new, image_start.shape))
    # A sample with no query row (training without an answer span) passes through.
    passthrough = ~jnp.any(qmask, axis=-1)
    src, valid = drop_gather_index(keep, image_start, seq.valid.sum(-1), passthrough,
                                   n_prev=n_prev, n_new=n_new, out_len=out_len)
    return gather_sequence(seq, src, valid, stage2.positions), keep


def dart_drop(text, params: dict, seq: Sequence, keys, *, n_prev: np.ndarray,
              n_new: np.ndarray, out_len: int):
    """DART's drop (docs/BASELINES.md §2, §9): each sample's keep from `dart_select` on
    seq.hidden (layer K-1's output) through the final norm and keys [B, L, KV, hd]
    (layer K-1's, post-RoPE); positions kept. Each sample is rolled so its image
    starts at row 0 (dart_select's image_start is static; the pivot visiting
    order still hashes the original positions) and its valid length bounds the
    text pivots. Returns (new seq, keep [B, n_new] image indices)."""
    if not (np.all(n_prev == n_prev[0]) and np.all(n_new == n_new[0])):
        raise ValueError(f"DART needs one image-token count for the whole batch (got "
                         f"{sorted(set(n_prev.tolist()))}); batch images of one size together "
                         "(eval.py run groups them by shape_key)")
    n, kept = int(n_prev[0]), int(n_new[0])
    if kept > n:
        raise ValueError(f"DART keeps {kept} image tokens (stage2.keep) but the image block has "
                         f"{n}; use a smaller DART preset or a larger image")
    topk = dart_topk(kept)
    if topk < 1:   # a ratio preset on a small image: nothing left to pick but the pivots
        raise ValueError(f"DART keeps {kept} of the image block's {n} tokens, below one pick per "
                         "pivot; use a larger stage2 ratio or a larger image")
    hidden = rms_norm(seq.hidden, params["norm"]["scale"], text.config.rms_norm_eps)
    hidden, keys = at_least_float32(hidden), at_least_float32(keys)
    lengths = seq.valid.sum(-1).astype(jnp.int32)
    rows = jnp.arange(seq.valid.shape[1])

    def one(h, k, start, length):
        order = (rows + start) % rows.shape[0]
        return dart_select(h[order], jnp.swapaxes(k[order], 0, 1), image_start=0, n_image=n,
                           token_topk=topk, valid_length=length - start,
                           row_offset=start)["keep"]

    keep = jax.vmap(one)(hidden, keys, seq.image_start, lengths)
    image_start = jnp.where(seq.has_image, seq.image_start, -1)
    src, valid = drop_gather_index(keep, image_start, lengths, ~seq.has_image, n_prev=n,
                                   n_new=kept, out_len=out_len)
    return gather_sequence(seq, src, valid, "keep"), keep


def run_segment(text, params: dict, seq: Sequence, lo: int, hi: int, split: bool,
                return_kv: bool, need_keys: bool = False):
    """Layers lo..hi-1 -> (seq after them, hidden the next boundary ranks with,
    layer hi-1's keys [B, L, KV, hd] when `need_keys` (else None), Segment).

    FastV ranks with layer hi-1's own attention, so it needs that layer's input;
    DART reads layer hi-1's keys: both `split` the last layer off.
    """
    mid = hi - 1 if split else hi
    h, kv = text.run_layers(params, seq.hidden, seq.positions, seq.valid, lo, mid,
                            return_kv=return_kv)
    score_hidden, keys = h, None
    if split:
        h, kv2 = text.run_layers(params, h, seq.positions, seq.valid, mid, hi,
                                 return_kv=return_kv or need_keys)
        keys = kv2[0][-1] if need_keys else None
        if return_kv:
            kv = kv2 if kv is None else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), kv, kv2)
    return (seq._replace(hidden=h), score_hidden, keys,
            Segment(lo, hi, seq.valid, seq.positions, kv))


def run_language_model(text, params: dict, seq: Sequence, num_image, stage2, *,
                       images_in_every_sample: bool = True, train: bool = False,
                       segment_lengths: Optional[Seq[int]] = None, return_kv: bool = False):
    """Runs every decoder layer, dropping image tokens at the Stage-2 boundaries.

    text: the LM (`LlamaModel` or a subclass with its `stage2_scores` hook);
    params: its params; seq: the `Sequence` entering layer 0; num_image: n_0 (a
    Python int, or one per sample); stage2: a `Stage2Config` or None (every
    layer, no drop). segment_lengths: static buffer length of each later segment
    (host-computed, docs/ALGORITHM.md §3.6); default: shrink by the smallest dropped count when
    every sample has an image and this is not training, else keep the length.
    Returns (final seq with hidden before the final norm, [Segment, ...], [keep, ...]).
    """
    num_layers = text.config.num_hidden_layers
    if stage2 is None:
        h, kv = text.run_layers(params, seq.hidden, seq.positions, seq.valid, 0, num_layers,
                                return_kv=return_kv)
        return seq._replace(hidden=h), [Segment(0, num_layers, seq.valid, seq.positions, kv)], []
    counts = image_counts(stage2, num_image, seq.hidden.shape[0])
    bounds = [0, *stage2.layers, num_layers]
    segments, kept = [], []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        boundary_run = s < len(bounds) - 2 and counts[:, s].max() > 0
        fastv = boundary_run and stage2.method == "fastv"
        dart = boundary_run and stage2.method == "dart"
        seq, score_hidden, keys, segment = run_segment(text, params, seq, lo, hi, fastv or dart,
                                                       return_kv, need_keys=dart)
        segments.append(segment)
        if not boundary_run:
            continue
        n_prev, n_new = counts[:, s], counts[:, s + 1]
        length = seq.hidden.shape[1]
        if segment_lengths is not None:
            out_len = segment_lengths[s]
        elif train or not images_in_every_sample:
            out_len = length
        else:
            out_len = length - int((n_prev - n_new).min())
        if dart:
            seq, keep = dart_drop(text, params, seq, keys, n_prev=n_prev, n_new=n_new,
                                  out_len=out_len)
            kept.append(keep)
            continue
        layer_params = layer_at(params["layers"], hi - 1 if fastv else hi)
        seq, keep = drop_image_tokens(text, layer_params, seq, score_hidden, n_prev=n_prev,
                                      n_new=n_new, stage2=stage2, out_len=out_len, train=train)
        kept.append(keep)
    return seq, segments, kept
