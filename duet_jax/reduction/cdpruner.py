"""CDPruner: conditional DPP between projector and LLM (docs/BASELINES.md §4).

Kernel ``L = diag(rel) S diag(rel)``: ``S`` is the cosine similarity of the
projector outputs, ``rel`` the (negated, as the official code has it) mean
cosine between each patch's CLIP image embedding and the question's CLIP text
embeddings, min-max scaled over the whole batch. Greedy MAP inference (the
fast Cholesky-style update) picks ``T`` tokens; no early stop.

Batch semantics follow the official function: one question (``text_embeds``)
for the batch and one min/max over all ``B x N`` relevances. The official eval
runs batch 1, so a per-sample selection with per-sample questions is
``jax.vmap`` of this function over samples with a leading batch of 1 each.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ._zoo import HIGHEST, ascending, check_count, check_float, unit_gram, unit_rows

RELEVANCE_EPS = 1e-6


def cdpruner_relevance(image_embeds: jax.Array, text_embeds: jax.Array,
                       text_mask=None) -> jax.Array:
    """[B, N, P] x [M, P] -> [B, N]: ``-mean_m cos(image, text_m)``, then
    ``(rel - min + 1e-6) / (max - min)`` with min and max over the whole array.
    ``text_mask`` [M] bool (None: all): the mean runs over the True segments only,
    so a question padded to a batch's static segment count keeps its own mean."""
    ie, te = unit_rows(image_embeds), unit_rows(text_embeds)
    cos = -jnp.einsum("bnp,mp->bnm", ie, te, precision=HIGHEST)
    if text_mask is None:
        rel = jnp.mean(cos, axis=-1)
    else:
        w = text_mask.astype(cos.dtype)
        rel = jnp.sum(cos * w, axis=-1) / jnp.sum(w)
    lo, hi = jnp.min(rel), jnp.max(rel)
    return (rel - lo + RELEVANCE_EPS) / (hi - lo)


@functools.partial(jax.jit, static_argnames=("T",))
def cdpruner_select(features: jax.Array, image_embeds: jax.Array, text_embeds: jax.Array,
                    T: int, text_mask=None) -> dict:
    """CDPruner selection (docs/BASELINES.md §4).

    features:     [B, N, D] projector outputs (the similarity space).
    image_embeds: [B, N, P] CLIP ``visual_projection(post_layernorm(patches))``.
    text_embeds:  [M, P] CLIP text embeddings of the question's 77-token segments.
    T:            static number of tokens, ``1 <= T <= N`` (and at most rank S).
    text_mask:    [M] bool, the real segments of ``text_embeds`` (None: all).

    Returns ``{"select_order": [B, T] int32`` (greedy order), ``"keep": [B, T]
    int32`` ascending, ``"relevance": [B, N]`` (after the min-max step)``}``.
    """
    for name, x in (("features", features), ("image_embeds", image_embeds),
                    ("text_embeds", text_embeds)):
        check_float(name, x)
    b, n, _ = features.shape
    if image_embeds.shape[:2] != (b, n) or image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(f"image_embeds {image_embeds.shape} / text_embeds {text_embeds.shape} "
                         f"do not match features {features.shape}")
    check_count("T", T, 1, n)
    similarity = unit_gram(features)                                    # [B, N, N]
    relevance = cdpruner_relevance(image_embeds, text_embeds, text_mask).astype(similarity.dtype)
    kernel = relevance[:, :, None] * similarity * relevance[:, None, :]

    batch = jnp.arange(b)
    d2 = jnp.diagonal(kernel, axis1=1, axis2=2)                         # [B, N]
    cis = jnp.zeros((T, b, n), kernel.dtype)
    order = jnp.zeros((b, T), jnp.int32)

    def body(i, carry):
        cis, d2, order = carry
        j = jnp.argmax(d2, axis=-1)
        proj = jnp.einsum("tb,tbn->bn", cis[:, batch, j], cis, precision=HIGHEST)
        e = (kernel[batch, j] - proj) / jnp.sqrt(d2[batch, j])[:, None]
        d2 = (d2 - jnp.square(e)).at[batch, j].set(-jnp.inf)
        return cis.at[i].set(e), d2, order.at[:, i].set(j.astype(jnp.int32))

    _, _, order = lax.fori_loop(0, T, body, (cis, d2, order))
    return {"select_order": order, "keep": ascending(order), "relevance": relevance}
