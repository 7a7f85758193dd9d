"""Stage-2 query sets `Q_b` (docs/ALGORITHM.md §3.3): the rows whose attention ranks the image.

Every rule is written once over an array module `xp` and runs on device
(`jax.numpy`, inside the model) or on the host (`numpy`, the training step
planner, which must predict the drops before the step is compiled):
`train_query_mask` and `train_query_mask_host` are the same code.

Rows "after the image" are `q >= image_start + num_image`; `image_start < 0`
marks a sample without an image (no query rows). `num_image` is a Python int or
a per-sample array broadcastable to `[B, 1]` (LLaVA-NeXT's per-sample counts).
All masks are `[B, L]` bool.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from duet_jax.labels import IGNORE_INDEX

QUERY_SETS = ("all", "last", "salient")


def _after_image(xp, shape, image_start, num_image):
    rows = xp.arange(shape[-1], dtype=xp.int32)[None, :]
    start = xp.asarray(image_start).astype(xp.int32)[:, None]
    return (start >= 0) & (rows >= start + num_image)


def _last_valid_row(xp, attention_mask):
    valid = xp.asarray(attention_mask).astype(bool)
    rows = xp.arange(valid.shape[-1], dtype=xp.int32)
    last = xp.max(xp.where(valid, rows, -1), axis=-1, keepdims=True)
    return rows[None, :] == last


def _with_fallback(xp, primary, fallback, image_start):
    """Replace an empty primary set by the fallback set, per image-carrying sample."""
    empty = ~xp.any(primary, axis=-1) & (xp.asarray(image_start) >= 0)
    return xp.where(empty[:, None], fallback, primary), empty & xp.any(fallback, axis=-1)


def _check(queries):
    if queries not in ("all", "last"):
        raise ValueError(f"unknown query set {queries!r}; use 'all' or 'last' "
                         "(build 'salient' masks from the salient positions)")


def official_query_mask(attention_mask, image_start, num_image: int):
    """Official ``all`` query set: rows from ``p_b + n`` to the end of the padded
    sequence, padding rows included (docs/ALGORITHM.md §3.3, §6 D6). attention_mask [B, L] only sets
    the shape. Samples without an image (image_start < 0) get no rows."""
    return _after_image(jnp, attention_mask.shape, image_start, num_image)


def eval_query_mask(attention_mask, image_start, num_image: int, queries: str = "all"):
    """Evaluation query sets (project default, valid rows only).

    ``all``: valid rows after the image block; ``last``: the last valid row.
    Returns (mask [B, L] bool, fell_back [B] bool): an empty ``all`` set falls
    back to ``last`` (docs/ALGORITHM.md §6 D12) and is flagged.
    """
    last = _last_valid_row(jnp, attention_mask)
    if queries == "last":
        return last, jnp.zeros(last.shape[:1], bool)
    _check(queries)
    rows = _after_image(jnp, attention_mask.shape, image_start, num_image)
    return _with_fallback(jnp, rows & attention_mask.astype(bool), last, image_start)


def _train_query_mask(xp, labels, attention_mask, image_start, num_image, queries):
    valid = xp.asarray(attention_mask).astype(bool)
    labels = xp.asarray(labels)
    after = _after_image(xp, labels.shape, image_start, num_image)
    from_last_image = _after_image(xp, labels.shape, image_start, num_image - 1)
    unsupervised = labels == IGNORE_INDEX
    next_supervised = xp.pad(~unsupervised[:, 1:], ((0, 0), (0, 1)))
    last = valid & from_last_image & unsupervised & next_supervised
    if queries == "last":
        return last, xp.zeros(labels.shape[:1], bool)
    _check(queries)
    return _with_fallback(xp, valid & after & unsupervised, last, image_start)


def train_query_mask(labels, attention_mask, image_start, num_image: int, queries: str = "all"):
    """Training query sets from labels [B, L] (-100 = not supervised).

    ``all``: valid rows after the image block with label -100. ``last``: valid
    rows q with label[q] == -100 and label[q+1] != -100 (the token before each
    answer span) from the last image row on; the last image row is admitted
    because in the pretraining ``plain`` template the caption follows the
    image directly, and that is where ``all`` is empty and falls back (docs/ALGORITHM.md §6 D12).
    Returns (mask [B, L] bool, fell_back [B] bool; True where the empty
    ``all`` set was replaced by a non-empty ``last`` set). A sample whose mask
    is still empty has no answer span after a non-answer token: pass it through.
    """
    return _train_query_mask(jnp, labels, attention_mask, image_start, num_image, queries)


def train_query_mask_host(labels, attention_mask, image_start, num_image: int,
                          queries: str = "all"):
    """`train_query_mask` in NumPy on host arrays (same rule, same code)."""
    return _train_query_mask(np, labels, attention_mask, image_start, num_image, queries)


def stage2_query_mask(valid, labels, prompt, salient, image_start, num_image, queries: str,
                      train: bool):
    """The query rows of one Stage-2 boundary inside the model: [B, L] bool.

    valid, labels, prompt (rows of the prompt), salient (salient question tokens):
    [B, L]; image_start [B] (< 0: no image); num_image: the block length before
    the drop. Training: `train_query_mask`, or for ``salient`` the per-turn
    salient rows among the unsupervised rows after the image (falling back to
    ``last`` where there are none). Evaluation: only prompt rows may be queries
    (generated tokens never re-rank): `eval_query_mask` on them, or for
    ``salient`` the salient rows after the image plus the last prompt row.
    """
    if queries not in QUERY_SETS:
        raise ValueError(f"unknown query set {queries!r}; use one of {QUERY_SETS}")
    after_image = _after_image(jnp, valid.shape, image_start, num_image)
    if train:
        if queries == "salient":
            mask = salient & valid & after_image & (labels == IGNORE_INDEX)
            last, _ = train_query_mask(labels, valid, image_start, num_image, "last")
            return jnp.where(mask.any(1, keepdims=True), mask, last)
        return train_query_mask(labels, valid, image_start, num_image, queries)[0]
    prompt_valid = valid & prompt
    if queries == "salient":
        last, _ = eval_query_mask(prompt_valid, image_start, num_image, "last")
        return (salient & prompt_valid & after_image) | last
    return eval_query_mask(prompt_valid, image_start, num_image, queries)[0]
