"""LLaVA-OneVision with DUET Stage 1 (docs/ALGORITHM.md §2.9); Stage 2 is the shared runner.

SigLIP has no CLS token, so every crop (the base image, each AnyRes tile, each
video frame) is reduced by the CLS-free rule Qwen2.5-VL uses
(`duet_jax.reduction.stage1_nocls`): a patch's score is the attention it
receives at the feature layer (column sum over queries of the head-mean
probabilities), the metric is the head-mean of that layer's keys, and the kept
rows (the feature layer's output) stay in place. Per crop K = d + C
(`Stage1Config(cls_token=False).output_size(N)`). The block:

* image: the base crop's K rows in place, then every tile's K rows ordered by
  their patch's (or anchor's) raster index on the whole tile canvas (the NeXT
  rule of docs/ALGORITHM.md §2.6, contextual rows at their anchors); `(1 + G) K` rows, no
  unpadding, no `anyres_max_N` resize, no newline rows (a canvas with holes has
  no rows to unpad, resize or end);
* video: each frame's K rows in place, frames in time order; `F K` rows, no
  pooling (it needs the full grid), no newline.

All counts and gather keys are host-side NumPy of the static image sizes.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from duet_jax.models import anyres
from duet_jax.models.llava import ImageFeatures
from duet_jax.reduction.stage1_nocls import column_scores, vision_merge_in_place


def check_stage1(stage1) -> None:
    if stage1.cls_token or stage1.mode != "duet":
        raise ValueError("LLaVA-OneVision's SigLIP tower has no CLS token: Stage 1 needs "
                         "Stage1Config(cls_token=False) in mode 'duet' (the llavaov-duet-* presets)")


def reduced_counts(model, pixel_values, stage1) -> tuple:
    """Visual tokens per sample after Stage 1: (1 + G) K per image, F K per video."""
    check_stage1(stage1)
    k = stage1.output_size(model.config.vision.num_patches)
    if not hasattr(pixel_values, "sizes"):
        return (pixel_values.shape[1] * k,) * pixel_values.shape[0]
    return tuple(anyres.num_crops(model.config, s) * k for s in pixel_values.sizes)


def merged_features(model, params: dict, pixel_values, stage1) -> ImageFeatures:
    """Stage 1 per crop, then the docs/ALGORITHM.md §2.9 block layout -> tokens [B, F, Dt]
    (padded to the batch maximum; rows past a sample's count are padding)."""
    check_stage1(stage1)
    cfg = model.config
    pixels, counts, offsets = model.crops(pixel_values)
    layer = cfg.feature_layer_index
    out = model.vision.apply(params["vision"], pixels, stop_after=layer, probe_layer=layer,
                             probe_full_attn=True)
    merge = vision_merge_in_place(column_scores(out.probe.attn), out.probe.metric, out.hidden,
                                  dominant=stage1.dominant, contextual=stage1.contextual,
                                  width=stage1.width)
    tokens = model.project(params, merge.tokens)                             # [Ctot, K, Dt]
    b, k, dt = len(counts), tokens.shape[1], tokens.shape[2]
    if not hasattr(pixel_values, "sizes"):                                   # video
        return ImageFeatures(tokens.reshape(b, counts[0] * k, dt), None, merge)
    n, g_max = cfg.vision.num_patches, max(counts) - 1
    # candidate crops per sample: base + G_max tile slots (missing tiles repeat the base)
    slot = np.arange(1 + g_max)[None, :]
    cand = np.where(slot < np.array(counts)[:, None], offsets[:, None] + slot, offsets[:, None])
    rows = tokens[cand].reshape(b, (1 + g_max) * k, dt)
    canvas = np.stack([anyres.tile_canvas_index(cfg, s, g_max) for s in pixel_values.sizes])
    tile_keys = k + jnp.take_along_axis(jnp.asarray(canvas), merge.index[cand[:, 1:]], axis=-1)
    missing = slot[:, 1:, None] >= np.array(counts)[:, None, None]           # [B, G_max, 1]
    filler = k + g_max * n + np.arange(g_max * k).reshape(1, g_max, k)
    tile_keys = jnp.where(missing, filler, tile_keys)
    keys = jnp.concatenate([jnp.broadcast_to(jnp.arange(k), (b, k)),
                            tile_keys.reshape(b, g_max * k)], axis=1)
    order = jnp.argsort(keys, axis=1, stable=True)[:, :max(counts) * k]
    return ImageFeatures(jnp.take_along_axis(rows, order[..., None], axis=1), None, merge)
