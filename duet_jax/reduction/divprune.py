"""DivPrune: greedy max-min diversity on projector outputs (docs/BASELINES.md §1).

Distances are ``1 - cos`` between the image rows of one sample. The first pick
is the token whose nearest *other* token is farthest (the second-smallest
entry of its distance column, counted with multiplicity, so a duplicate row
scores 0); each later pick maximises the minimum distance to the picks so far
(rows of the picked tokens, as the official code reads them). Picked tokens are
not masked out, exactly as upstream: their own distance is ~0, so they lose to
any token at positive distance. ``argmax`` is the first maximum.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ._zoo import ascending, check_count, check_float, unit_gram


def divprune_budget(subset_ratio: float, num_image: int = 576) -> int:
    """Tokens DivPrune keeps for a ratio: ``int(round(ratio * N))`` (0.098 -> 56 of 576)."""
    if not 0.0 < float(subset_ratio) <= 1.0:
        raise ValueError(f"DivPrune subset ratio {subset_ratio} is outside (0, 1]")
    return int(round(float(subset_ratio) * num_image))


def cosine_distance(features: jax.Array) -> jax.Array:
    """[B, N, D] -> [B, N, N] ``1 - cos`` between rows (diagonal ~0, not forced)."""
    return 1.0 - unit_gram(features)


def _second_smallest_per_column(dist: jax.Array) -> jax.Array:
    """[B, N, N] -> [B, N]: second-smallest of every column ``dist[:, :, j]``,
    with multiplicity (remove one occurrence of the minimum, take the min again)."""
    first = jnp.argmin(dist, axis=1)                                  # [B, N] row of the min
    rows = jnp.arange(dist.shape[1])[None, :, None]
    masked = jnp.where(rows == first[:, None, :], jnp.inf, dist)
    return jnp.min(masked, axis=1)


@functools.partial(jax.jit, static_argnames=("k",))
def divprune_select(features: jax.Array, k: int) -> dict:
    """DivPrune selection (docs/BASELINES.md §1).

    features: [B, N, D] projector outputs of the image rows (float32 or wider).
    k:        static number of tokens to keep, ``1 <= k <= N``.

    Returns ``{"select_order": [B, k] int32`` (greedy pick order),
    ``"keep": [B, k] int32`` (the same indices ascending)``}``.
    """
    check_float("features", features)
    b, n, _ = features.shape
    check_count("k", k, 1, n)
    dist = cosine_distance(features)                                  # [B, N, N]
    batch = jnp.arange(b)
    first = jnp.argmax(_second_smallest_per_column(dist), axis=-1).astype(jnp.int32)
    order = jnp.zeros((b, k), jnp.int32).at[:, 0].set(first)
    running = dist[batch, first]                                      # [B, N] min over picks

    def body(i, carry):
        order, running = carry
        pick = jnp.argmax(running, axis=-1).astype(jnp.int32)
        order = order.at[:, i].set(pick)
        return order, jnp.minimum(running, dist[batch, pick])

    order, _ = lax.fori_loop(1, k, body, (order, running))
    return {"select_order": order, "keep": ascending(order)}
