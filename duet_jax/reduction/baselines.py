"""Schedule arithmetic and the PyramidDrop / FastV baselines (docs/ALGORITHM.md §3.1, §4.1, §5).

Counts are host-side Python ints: ``n_s = int(n_0 * r_s)`` evaluated on
Python floats (float64, floor), always relative to ``n_0``, exactly as the
official scripts do. PyramidDrop is Stage 2 with ``queries='last'`` and no
Stage 1 (see ``presets``). FastV ranks with the *actual* attention of layer
``K_f - 1`` (its own weights on its own input), which is
:func:`text_image_scores` fed that layer's input and weights.
"""
from __future__ import annotations

from typing import Sequence

import jax

from .queries import eval_query_mask
from .stage2 import text_image_scores

PDROP_DEFAULT_LAYERS = (8, 16, 24)
PDROP_DEFAULT_RATIOS = (0.5, 0.25, 0.125)


def stage_counts(n0: int, ratios: Sequence[float]) -> list:
    """Image tokens per segment ``[n_0, n_1, .., n_S]`` with ``n_s = int(n_0 * r_s)``."""
    return [int(n0)] + [int(n0 * float(r)) for r in ratios]


def segment_bounds(layers: Sequence[int], num_layers: int) -> list:
    """Decoder-layer ranges ``[(0, l_1), (l_1, l_2), .., (l_S, L)]`` of the S+1 segments."""
    edges = [0, *[int(l) for l in layers], int(num_layers)]
    return list(zip(edges[:-1], edges[1:]))


def average_image_tokens(counts: Sequence[int], layers: Sequence[int], num_layers: int) -> float:
    """docs/ALGORITHM.md §4.1: image tokens per LM layer averaged over the L layers.

    ``counts`` = ``[n_0, .., n_S]`` (one per segment), ``layers`` = ``[l_1, .., l_S]``.
    """
    bounds = segment_bounds(layers, num_layers)
    if len(counts) != len(bounds):
        raise ValueError(f"{len(counts)} counts for {len(bounds)} segments; "
                         "pass n_0 followed by one count per boundary layer")
    return sum((end - start) * n for (start, end), n in zip(bounds, counts)) / num_layers


def fastv_keep_count(num_image: int, drop_ratio: float) -> int:
    """FastV keeps ``round(N * (1 - R))`` image tokens (Python round)."""
    if not 0.0 <= drop_ratio <= 1.0:
        raise ValueError(f"FastV drop ratio {drop_ratio} is outside [0, 1]")
    return int(round(num_image * (1.0 - drop_ratio)))


def fastv_scores(layer_input, norm_scale, wq, wk, positions, attention_mask, image_start, *,
                 num_image: int, num_heads: int, num_kv_heads: int, rms_eps: float,
                 rope_theta: float, rope_inv_freq=None, rope_attention_scaling: float = 1.0,
                 query_block: int = 128) -> jax.Array:
    """FastV ranking scores [B, num_image] float32.

    layer_input [B, L, D] is the input of decoder layer ``K_f - 1`` and
    ``norm_scale``/``wq``/``wk`` are that layer's, so the scores are that
    layer's own attention probabilities (head mean) from the last valid token
    of each sample (the official code uses row -1 of batch element 0).
    """
    query_mask, _ = eval_query_mask(attention_mask, image_start, num_image, queries="last")
    return text_image_scores(
        layer_input, norm_scale, wq, wk, positions, attention_mask, query_mask, image_start,
        num_image=num_image, num_heads=num_heads, num_kv_heads=num_kv_heads, rms_eps=rms_eps,
        rope_theta=rope_theta, rope_inv_freq=rope_inv_freq,
        rope_attention_scaling=rope_attention_scaling, query_block=query_block)

