"""Stage 1: vision-to-vision merge inside the vision tower (docs/ALGORITHM.md §2).

Every size below is a static Python int derived from ``(N, dominant,
contextual, width, mode)``; selection is per sample with ``lax.top_k`` /
``argmax`` (ties go to the lowest index, docs/ALGORITHM.md §2.8) and merging is one-hot sums,
so ``vision_merge`` jits with everything but the arrays static and vmaps over
crops or frames. Scores, normalisation and similarities are float32; merged
values are accumulated in float32 and cast back to ``hidden.dtype``.

Positions: vision-sequence positions, ``0`` = CLS, patch ``p`` = ``p + 1``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("duet", "visionzip", "paper")


class MergeResult(NamedTuple):
    """Output of :func:`vision_merge`.

    tokens:           [B, K, D]  dominant rows first (ascending position), then
                      the C contextual rows (``hidden.dtype``).
    positions:        [B, K] int32 vision position of every row; a contextual
                      row reports its anchor (``duet``/``visionzip``) or its
                      centroid (``paper``).
    member_positions: [B, Q] int32 vision positions of the merged members
                      (the tokens folded into contextual rows besides anchors).
    member_anchor:    [B, Q] int32 contextual index ``j in [0, C)`` each member
                      was folded into (its row is ``tokens[:, K - C + j]``).

    ``duet``/``visionzip``: contextual row ``j`` = anchor row + mean of the
    members with ``member_anchor == j`` (anchor alone when it has none);
    ``Q = P - C`` (duet) or ``M - C`` (visionzip). ``paper``: row ``j`` = plain
    mean of the ``w`` members with ``member_anchor == j`` (``Q = C * w``,
    clusters may overlap and may contain the centroid itself).
    """

    tokens: jax.Array
    positions: jax.Array
    member_positions: jax.Array
    member_anchor: jax.Array


# --------------------------------------------------------------------------
# Static sizes.

def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown Stage-1 mode {mode!r}; use one of {MODES}")


def _check_counts(num_patches: int, dominant: int, contextual: int, width: int,
                  mode: str) -> None:
    _check_mode(mode)
    for name, value in (("num_patches", num_patches), ("dominant", dominant),
                        ("contextual", contextual), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a Python int, got {value!r}")
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if not 1 <= dominant <= num_patches:
        raise ValueError(
            f"dominant={dominant} is outside [1, {num_patches}] for {num_patches} patches; "
            f"lower dominant ({'patches' if mode == 'paper' else 'CLS included'})")
    if contextual < 0:
        raise ValueError(f"contextual must be >= 0, got {contextual}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if mode == "visionzip" and contextual == 0:
        raise ValueError("mode='visionzip' needs contextual >= 1 (the original code divides "
                         "by it); use contextual >= 1 or mode='duet'")


def _duet_slots(num_nondominant: int, contextual: int, width: int):
    """Pool size P and the static anchor / member slots inside the pool
    (docs/ALGORITHM.md §2.3 steps 5-7)."""
    pool = min(max(1, width * contextual), num_nondominant)
    step = max(1, pool // max(1, contextual))
    anchors = list(range(0, pool, step))[:contextual] or [0]
    taken = set(anchors)
    members = [i for i in range(pool) if i not in taken]
    return pool, np.asarray(anchors, np.int32), np.asarray(members, np.int32)


def _visionzip_slots(num_nondominant: int, contextual: int):
    """Anchor / member slots in position-ordered non-dominant space (docs/ALGORITHM.md §2.4)."""
    step = max(1, num_nondominant // contextual)
    anchors = list(range(0, num_nondominant, step))[:contextual]
    taken = set(anchors)
    members = [i for i in range(num_nondominant) if i not in taken]
    return np.asarray(anchors, np.int32), np.asarray(members, np.int32)


def vision_merge_size(num_patches: int, dominant: int, contextual: int, width: int = 4,
                      mode: str = "duet") -> int:
    """Static Stage-1 output length K per crop (docs/ALGORITHM.md §2.6).

    ``duet``/``visionzip``: ``dominant`` includes CLS, ``K = dominant + C`` with
    ``C = min(contextual, M)``, ``M = N - (dominant - 1)`` (``duet`` with
    ``contextual=0`` still yields ``C = 1``). ``paper``: ``dominant`` counts
    patches, ``K = dominant + min(contextual, N - dominant)``.
    """
    _check_counts(num_patches, dominant, contextual, width, mode)
    if mode == "paper":
        return dominant + min(contextual, num_patches - dominant)
    num_nondominant = num_patches - (dominant - 1)
    if mode == "duet":
        return dominant + len(_duet_slots(num_nondominant, contextual, width)[1])
    return dominant + len(_visionzip_slots(num_nondominant, contextual)[0])


# --------------------------------------------------------------------------
# Array helpers.

def _take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, T, F], index [B, k] -> [B, k, F]."""
    return jnp.take_along_axis(x, index[..., None], axis=1)


def _top_indices(scores: jax.Array, k: int) -> jax.Array:
    """[B, N] -> [B, k] int32 indices, descending score, ties to the lowest index."""
    if k == 0:
        return jnp.zeros(scores.shape[:-1] + (0,), jnp.int32)
    return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


def _membership(index: jax.Array, size: int) -> jax.Array:
    """[B, k] indices -> [B, size] bool, True where an index is listed."""
    return jnp.any(index[..., None] == jnp.arange(size, dtype=index.dtype), axis=-2)


def _unit(metric: jax.Array) -> jax.Array:
    """Row-normalise in float32; the floor keeps all-zero keys finite (cos = 0)."""
    m = metric.astype(jnp.float32)
    return m / jnp.maximum(jnp.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


def _merge_into_anchors(hidden, unit_metric, anchor_pos, member_pos):
    """Hard-assign members to the most cosine-similar anchor; anchor + member mean.

    anchor_pos [B, C], member_pos [B, Q] vision positions.
    Returns (contextual rows [B, C, D] float32, assignment [B, Q] int32).
    """
    num_anchors = anchor_pos.shape[1]
    u_anchor = _take_rows(unit_metric, anchor_pos)
    u_member = _take_rows(unit_metric, member_pos)
    sim = jnp.einsum("bqd,bcd->bqc", u_member, u_anchor)
    assignment = jnp.argmax(sim, axis=-1).astype(jnp.int32)   # ties -> lowest anchor slot
    onehot = jax.nn.one_hot(assignment, num_anchors, dtype=jnp.float32)
    x_member = _take_rows(hidden, member_pos).astype(jnp.float32)
    total = jnp.einsum("bqc,bqd->bcd", onehot, x_member)
    count = jnp.sum(onehot, axis=1)[..., None]
    rows = _take_rows(hidden, anchor_pos).astype(jnp.float32) + total / jnp.maximum(count, 1.0)
    return rows, assignment


def _dominant_split(cls_attn, num_dominant_patches):
    """CLS-attention scores and dominant patch indices (docs/ALGORITHM.md §2.2 steps 1-3).

    Returns (scores [B, N] f32, dominant patch indices [B, d'] ascending,
    is_dominant [B, N] bool).
    """
    scores = jnp.sum(cls_attn.astype(jnp.float32), axis=1)
    dom = jnp.sort(_top_indices(scores, num_dominant_patches), axis=-1)
    return scores, dom, _membership(dom, scores.shape[-1])


def _merge_official(cls_attn, hidden, metric, dominant, contextual, width, mode):
    batch, num_patches = cls_attn.shape[0], cls_attn.shape[-1]
    num_nondominant = num_patches - (dominant - 1)
    scores, dom, is_dom = _dominant_split(cls_attn, dominant - 1)
    dom_pos = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), dom + 1], axis=1)

    if mode == "duet":
        pool_size, anchor_slots, member_slots = _duet_slots(num_nondominant, contextual, width)
        # Scores are probabilities (>= 0): -inf excludes dominant patches, and since
        # patch order == filtered order the tie order matches the official top-k.
        pool = _top_indices(jnp.where(is_dom, -jnp.inf, scores), pool_size)
    else:
        anchor_slots, member_slots = _visionzip_slots(num_nondominant, contextual)
        # Stable argsort of the flag lists non-dominant patches first, in position order.
        pool = jnp.argsort(is_dom, axis=-1, stable=True)[:, :num_nondominant].astype(jnp.int32)
    anchor_pos = pool[:, anchor_slots] + 1
    member_pos = pool[:, member_slots] + 1

    rows, assignment = _merge_into_anchors(hidden, _unit(metric), anchor_pos, member_pos)
    tokens = jnp.concatenate([_take_rows(hidden, dom_pos), rows.astype(hidden.dtype)], axis=1)
    positions = jnp.concatenate([dom_pos, anchor_pos], axis=1)
    return MergeResult(tokens, positions, member_pos, assignment)


def _merge_paper(attn, hidden, dominant, contextual, width):
    """Algorithm 1 as printed (docs/ALGORITHM.md §2.5): column-sum scores,
    attention-row clusters."""
    batch, num_patches = hidden.shape[0], hidden.shape[1] - 1
    num_rest = num_patches - dominant
    num_centroids = min(contextual, num_rest)
    cluster = min(width, num_rest)
    patch_attn = jnp.mean(attn[:, :, 1:, 1:].astype(jnp.float32), axis=1)    # [B, N, N]
    scores = jnp.sum(patch_attn, axis=1)                                      # received
    dom = jnp.sort(_top_indices(scores, dominant), axis=-1)
    is_dom = _membership(dom, num_patches)
    dom_pos = dom + 1
    if num_centroids == 0:
        empty = jnp.zeros((batch, 0), jnp.int32)
        return MergeResult(_take_rows(hidden, dom_pos), dom_pos, empty, empty)
    centroids = _top_indices(jnp.where(is_dom, -jnp.inf, scores), num_centroids)
    rows = jnp.take_along_axis(patch_attn, centroids[..., None], axis=1)      # [B, C, N]
    neighbours = jax.lax.top_k(jnp.where(is_dom[:, None, :], -jnp.inf, rows), cluster)[1]
    member_pos = neighbours.reshape(batch, num_centroids * cluster).astype(jnp.int32) + 1
    members = _take_rows(hidden, member_pos).astype(jnp.float32)
    means = jnp.mean(members.reshape(batch, num_centroids, cluster, -1), axis=2)
    tokens = jnp.concatenate([_take_rows(hidden, dom_pos), means.astype(hidden.dtype)], axis=1)
    member_anchor = jnp.broadcast_to(
        jnp.repeat(jnp.arange(num_centroids, dtype=jnp.int32), cluster), member_pos.shape)
    return MergeResult(tokens, jnp.concatenate([dom_pos, centroids + 1], axis=1),
                       member_pos, member_anchor)


def _check_array(name, x, rank):
    if x is None or getattr(x, "ndim", None) != rank:
        raise ValueError(f"{name} must be a rank-{rank} array, got "
                         f"{None if x is None else getattr(x, 'shape', type(x).__name__)}")


def vision_merge(cls_attn: Optional[jax.Array], hidden: jax.Array,
                 metric: Optional[jax.Array], *, dominant: int, contextual: int,
                 width: int = 4, mode: str = "duet",
                 attn: Optional[jax.Array] = None) -> MergeResult:
    """Reduce one crop's N+1 vision rows to K static rows (docs/ALGORITHM.md §2).

    Args:
      cls_attn: [B, H, N] CLS-query attention probabilities to the patch keys
        at the selection layer (``duet``/``visionzip``; unused by ``paper``).
      hidden:   [B, N+1, D] output of the selection layer, CLS at row 0.
      metric:   [B, N+1, Dm] head-mean raw key states of that layer
        (``duet``/``visionzip``; unused by ``paper``).
      dominant: ``duet``/``visionzip``: dominant tokens including CLS;
        ``paper``: dominant patches (no CLS in the output).
      contextual, width: requested contextual tokens and cluster width.
      mode: ``"duet"`` (official DUET code), ``"visionzip"``, ``"paper"``.
      attn: [B, H, N+1, N+1] full attention probabilities of the selection
        layer; required by ``paper`` mode only (patch-to-patch block).

    Returns:
      :class:`MergeResult`; ``K = vision_merge_size(N, dominant, contextual,
      width, mode)``.
    """
    _check_mode(mode)
    _check_array("hidden", hidden, 3)
    num_patches = hidden.shape[1] - 1
    vision_merge_size(num_patches, dominant, contextual, width, mode)   # validates counts
    batch = hidden.shape[0]
    if mode == "paper":
        _check_array("attn (required by mode='paper')", attn, 4)
        if attn.shape[0] != batch or attn.shape[2:] != (num_patches + 1, num_patches + 1):
            raise ValueError(f"attn shape {attn.shape} does not match hidden {hidden.shape}; "
                             f"expected [B, H, {num_patches + 1}, {num_patches + 1}]")
        return _merge_paper(attn, hidden, dominant, contextual, width)
    _check_array("cls_attn", cls_attn, 3)
    _check_array("metric", metric, 3)
    if cls_attn.shape[0] != batch or cls_attn.shape[2] != num_patches:
        raise ValueError(f"cls_attn shape {cls_attn.shape} does not match hidden "
                         f"{hidden.shape}; expected [B, H, {num_patches}] (patch keys only)")
    if metric.shape[:2] != hidden.shape[:2]:
        raise ValueError(f"metric shape {metric.shape} does not match hidden {hidden.shape}; "
                         f"expected [B, {num_patches + 1}, Dm] with the CLS row at 0")
    return _merge_official(cls_attn, hidden, metric, dominant, contextual, width, mode)
