"""Stage 2 with a per-sample image-token count n_0 (docs/ALGORITHM.md §3.6, LLaVA-NeXT).

AnyRes images of different grids enter the LM with different block sizes
`n_0[b] = (1 + G_b) K`, so every boundary keeps a different count per sample:
`n_s[b] = int(n_0[b] * r_s)`. All counts are host-known Python ints; the
static shapes use the batch maxima and slots beyond a sample's count are masked:

* scores: `text_image_scores` over `max_b n_{s-1}[b]` columns from each
  sample's image start; columns past the sample's block (text or padding)
  are masked to -1 (real scores are probabilities >= 0) before `top_k`;
* keep: `top_k(max_b n_s[b])`, then only the first `n_s[b]` winners (descending
  score, ties to the lowest index) are kept, sorted ascending;
* gather: the docs/ALGORITHM.md §3.6 map with per-sample `(n_{s-1}[b], n_s[b])`;
* buffer length: `L_s = L_{s-1} - min_b (n_{s-1}[b] - n_s[b])` (static, >= every
  sample's new valid length; exact for uniform batches).

For a batch with equal counts this computes exactly what
`duet_jax.models.reduced.run_language_model` does.
"""
from __future__ import annotations

from typing import Sequence as Seq

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.common import layer_at
from duet_jax.models.llama import LlamaModel
from duet_jax.models.reduced import (_query_mask, boundary_scores, check_scorable, gather_sequence,
                                     run_segment, unreduced_run)


def per_sample_counts(stage2, n0: Seq[int]) -> np.ndarray:
    """[B, S+1] int: image tokens of each sample in each segment."""
    return np.array([stage2.image_counts(int(n)) for n in n0], np.int64)


def _keep_per_sample(scores, n_prev: np.ndarray, n_new: np.ndarray):
    """scores [B, P] (P = max n_prev) -> keep [B, max n_new] ascending; slots past n_new[b] hold P."""
    width, k = scores.shape[1], int(n_new.max())
    cols = jnp.arange(width)[None, :]
    scores = jnp.where(cols < jnp.asarray(n_prev)[:, None], scores, -1.0)
    top = jax.lax.top_k(scores, k)[1].astype(jnp.int32)          # descending, ties -> low index
    slot = jnp.arange(k)[None, :]
    top = jnp.where(slot < jnp.asarray(n_new)[:, None], top, width)
    return jnp.sort(top, axis=-1)


def _gather_map(keep, image_start, lengths, passthrough, n_prev, n_new, out_len: int):
    """The docs/ALGORITHM.md §3.6 gather map with per-sample (n_prev, n_new):
    (src [B, out_len], valid)."""
    slots = jnp.arange(out_len, dtype=jnp.int32)[None, :]
    start = image_start.astype(jnp.int32)[:, None]
    n_prev = jnp.asarray(n_prev, jnp.int32)[:, None]
    n_new = jnp.asarray(n_new, jnp.int32)[:, None]
    k = keep.shape[-1]
    offset = jnp.clip(slots - start, 0, max(k - 1, 0))
    kept = jnp.take_along_axis(keep, offset, axis=-1) if k else jnp.zeros_like(slots)
    src = jnp.where(slots < start, slots,
                    jnp.where(slots < start + n_new, start + kept, slots + (n_prev - n_new)))
    through = (passthrough | (image_start < 0))[:, None]
    src = jnp.where(through, slots, src)
    new_len = jnp.where(through[:, 0], lengths, lengths - (n_prev - n_new)[:, 0])
    valid = slots < new_len[:, None]
    return jnp.where(valid, src, 0).astype(jnp.int32), valid


def drop_varlen(text: LlamaModel, layer_params: dict, seq, score_hidden, *, n_prev: np.ndarray,
                n_new: np.ndarray, stage2, out_len: int, train: bool):
    """One boundary with per-sample counts. Returns (new seq, keep [B, max n_new])."""
    image_start = jnp.where(seq.has_image, seq.image_start, -1)
    qmask = _query_mask(seq, image_start, jnp.asarray(n_prev, jnp.int32)[:, None],
                        stage2.queries, train)
    width = int(n_prev.max())
    uniform = bool(np.all(n_prev == width))
    # the last-image-row window starts at a per-sample row: only usable when uniform
    scores = boundary_scores(text, layer_params, seq, score_hidden, qmask, image_start, width,
                             query_rows=seq.valid.shape[1] - width + 1 if uniform else None)
    keep = _keep_per_sample(scores, n_prev, n_new)
    passthrough = ~jnp.any(qmask, axis=-1)
    src, valid = _gather_map(keep, image_start, seq.valid.sum(-1), passthrough, n_prev, n_new,
                             out_len)
    return gather_sequence(seq, src, valid, stage2.positions), keep


def run_language_model_varlen(text: LlamaModel, params: dict, seq, n0: Seq[int], stage2, *,
                              train: bool = False, return_kv: bool = False):
    """`reduced.run_language_model` with per-sample n_0 (a tuple of Python ints, one per sample).

    Returns (final seq, [Segment, ...], [keep [B, max_b n_s[b]], ...]); keep slots
    past a sample's count hold the block width (they select nothing).
    """
    num_layers = text.config.num_hidden_layers
    if stage2 is None:
        return unreduced_run(text, params, seq, return_kv)
    check_scorable(text)
    counts = per_sample_counts(stage2, n0)
    bounds = [0, *stage2.layers, num_layers]
    segments, kept = [], []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        boundary_run = s < len(bounds) - 2 and counts[:, s].max() > 0
        fastv = boundary_run and stage2.method == "fastv"
        seq, score_hidden, segment = run_segment(text, params, seq, lo, hi, fastv, return_kv)
        segments.append(segment)
        if not boundary_run:
            continue
        n_prev, n_new = counts[:, s], counts[:, s + 1]
        length = seq.hidden.shape[1]
        out_len = length if train else length - int((n_prev - n_new).min())
        layer_params = layer_at(params["layers"], hi - 1 if fastv else hi)
        seq, keep = drop_varlen(text, layer_params, seq, score_hidden, n_prev=n_prev, n_new=n_new,
                                stage2=stage2, out_len=out_len, train=train)
        kept.append(keep)
    return seq, segments, kept
