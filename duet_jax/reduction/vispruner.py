"""VisPruner: important + diverse patches at the vision-tower output (docs/BASELINES.md §3).

``T_imp`` patches with the highest head-mean CLS attention are kept as
"important"; the remaining ranking is thinned to ``T_div`` patches by rounds of
similarity matching: split the current list into even and odd positions, score
each even member by its best cosine against the odd members, drop the (at most
8) best-matched even members, and continue with ``[even survivors by
descending score] + [odd members]``. Both orders feed the next split, so the
port reproduces them exactly.

Static shapes: the list lives in a fixed buffer of ``R0 = N - T_imp`` slots with
the current length ``R`` (even, falling by ``r`` a round) tracked per round; the
per-round ``(R, r)`` schedule is a static table. Cosines come from one Gram
matrix of the unit rows (each entry is the same dot product the official
per-round ``a @ b^T`` computes).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._zoo import ascending, check_count, check_float, unit_gram

MAX_DROP_PER_ROUND = 8


def vispruner_counts(T: int, important_ratio: float) -> tuple:
    """``(T_imp, T_div)`` with ``T_imp = int(T * important_ratio)`` (Python float, floor)."""
    if not 0.0 <= float(important_ratio) <= 1.0:
        raise ValueError(f"VisPruner important_ratio {important_ratio} is outside [0, 1]")
    t_imp = int(T * float(important_ratio))
    return t_imp, T - t_imp


def vispruner_schedule(n: int, T: int, important_ratio: float) -> list:
    """The static rounds ``[(R, r), ..]`` of the diversity loop: ``r = min(8, R - T_div)``
    until it is ``<= 0``. Raises ValueError where the official code would crash:
    an odd list length entering a round, or a round dropping more even members
    than there are (``r > R / 2``, possible only when ``T_div < 8``)."""
    t_imp, t_div = vispruner_counts(T, important_ratio)
    rounds, length = [], n - t_imp
    while t_div > 0:
        r = min(MAX_DROP_PER_ROUND, length - t_div)
        if r <= 0:
            break
        if length % 2:
            raise ValueError(f"VisPruner with N={n}, T={T}, important_ratio={important_ratio}: "
                             f"{length} residual tokens is odd and the official even/odd split "
                             "fails; pick T or the ratio so that N - T_imp is even")
        if r > length // 2:
            raise ValueError(f"VisPruner with N={n}, T={T}, important_ratio={important_ratio}: "
                             f"a round would drop {r} of {length // 2} even-position tokens and "
                             "the official code fails; use a larger T - int(T * important_ratio)")
        rounds.append((length, r))
        length -= r
    return rounds


@functools.partial(jax.jit, static_argnames=("T", "important_ratio"))
def vispruner_select(features: jax.Array, cls_attn: jax.Array, T: int,
                     important_ratio: float) -> dict:
    """VisPruner selection (docs/BASELINES.md §3).

    features: [B, N, C] penultimate-layer CLIP patch features (no CLS).
    cls_attn: [B, H, N] that layer's CLS-query attention to the patches, per head.
    T, important_ratio: static budget; ``T_imp = int(T * important_ratio)``.

    Returns ``{"important": [B, T_imp]`` (descending attention),
    ``"selected_order": [B, T]`` (important, then the diverse survivors in their
    final list order), ``"keep": [B, T]`` ascending; all int32``}``.
    """
    check_float("features", features)
    check_float("cls_attn", cls_attn)
    b, n, _ = features.shape
    if cls_attn.shape[0] != b or cls_attn.shape[-1] != n:
        raise ValueError(f"cls_attn {cls_attn.shape} does not match features {features.shape}")
    check_count("T", T, 1, n)
    t_imp, t_div = vispruner_counts(T, important_ratio)
    rounds = vispruner_schedule(n, T, important_ratio)

    score = jnp.mean(cls_attn, axis=1)                                  # [B, N]
    rank = lax.top_k(score, n)[1].astype(jnp.int32)                     # descending
    important = rank[:, :t_imp]
    if t_div == 0:
        return {"important": important, "selected_order": important,
                "keep": ascending(important)}

    res = rank[:, t_imp:]                                               # [B, R0]
    if rounds:
        res = _diversity_rounds(unit_gram(features), res, rounds)
    selected = jnp.concatenate([important, res[:, :t_div]], axis=1)
    return {"important": important, "selected_order": selected, "keep": ascending(selected)}


def _diversity_rounds(gram: jax.Array, res: jax.Array, rounds: list) -> jax.Array:
    """Run the static ``rounds`` on the buffer ``res`` [B, R0] (R0 even); the
    first ``R`` slots are the current list, the rest are stale. ``gram`` [B, N, N]
    holds the cosines of the unit features."""
    b, r0 = res.shape
    half_cap = r0 // 2
    batch = jnp.arange(b)[:, None, None]
    lengths = jnp.asarray(np.array([length for length, _ in rounds], np.int32))
    drops = jnp.asarray(np.array([r for _, r in rounds], np.int32))
    col = jnp.arange(half_cap)
    out_pos = jnp.arange(r0)

    def body(step, res):
        half, r = lengths[step] // 2, drops[step]
        ev, od = res[:, 0::2], res[:, 1::2]                             # [B, half_cap]
        sim = gram[batch, ev[:, :, None], od[:, None, :]]               # [B, half_cap, half_cap]
        sim = jnp.where(col[None, None, :] < half, sim, -jnp.inf)
        s = jnp.where(col[None, :] < half, jnp.max(sim, axis=-1), -jnp.inf)
        order = jnp.argsort(-s, axis=-1, stable=True)                   # descending s
        ev_sorted = jnp.take_along_axis(ev, order, axis=-1)
        kept = half - r                                                 # even survivors
        from_ev = jnp.take_along_axis(ev_sorted, jnp.clip(out_pos + r, 0, half_cap - 1)[None]
                                      .repeat(b, 0), axis=-1)
        from_od = jnp.take_along_axis(od, jnp.clip(out_pos - kept, 0, half_cap - 1)[None]
                                      .repeat(b, 0), axis=-1)
        return jnp.where(out_pos[None] < kept, from_ev, from_od)

    return lax.fori_loop(0, len(rounds), body, res)
