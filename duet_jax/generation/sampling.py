"""Next-token choice of every decoder: greedy, or temperature + nucleus (top-p) sampling.

The top-p filter is HF's `TopPLogitsWarper` (min_tokens_to_keep=1): sort the
logits ascending, remove every token whose ascending cumulative probability is
<= 1 - top_p, and always keep the most likely token. Equivalently, a token
stays iff the probability mass strictly above it (in descending order) is
below top_p. Ties are ordered by index (a stable sort), so the filter is a
deterministic function of the logits.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """logits [B, V] -> [B, V] with the tokens outside the nucleus set to -inf."""
    order = jnp.argsort(logits, axis=-1)                                # ascending, stable
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1), axis=-1)
    remove_sorted = cumulative <= 1.0 - top_p
    remove_sorted = remove_sorted.at[..., -1].set(False)               # keep the top token
    rows = jnp.arange(logits.shape[0])[:, None]
    remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, logits)


def sample_token(logits: jax.Array, key: Optional[jax.Array], temperature: float,
                 top_p: float) -> jax.Array:
    """logits [B, V] float32 -> tokens [B] int32. Greedy when temperature <= 0
    (static; `key` unused), else softmax(logits / temperature) restricted to the
    top-p nucleus (top_p < 1), sampled with `key`."""
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
