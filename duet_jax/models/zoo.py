"""Zoo methods at the LLaVA LM input: the image rows a `SelectConfig` lets through
(docs/BASELINES.md §9).

One function for every method of the ``select`` section; it reads the tower
the way the method's paper does and returns the rows that replace the 576
projected patches:

* VisPruner: penultimate-layer patches + that layer's CLS attention, selected
  before the projector (the projector acts per row, so projecting the kept
  rows equals gathering projected rows);
* VScan stage 1: CLS attention of CLIP layers ``select.shallow_layer`` (5) and -2,
  merge in projector space;
* DivPrune, random, pool: projector outputs;
* CDPruner: projector outputs, CLIP ``visual_projection(post_layernorm(patches))``
  and the question's CLIP text embeddings (``zoo_inputs``, from the CLIP text
  tower the handle loads); one selection per sample with its own question.

`block_keep` runs DivPrune and random over a whole image block: LLaVA-NeXT's and
OneVision's AnyRes block, Qwen2.5-VL's merged tokens of one image.

Selections run in float32 at least (docs/BASELINES.md §0); the kept rows are
gathered from the model-dtype tensors. DART is a Stage-2 method
(`duet_jax.models.segments`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from duet_jax.models.clip_text import image_embeds as clip_image_embeds
from duet_jax.reduction import (at_least_float32 as _wide, cdpruner_select, divprune_select,
                                pool_tokens, random_select, vispruner_select, vscan_select)


def take_rows(x: jax.Array, keep: jax.Array) -> jax.Array:
    """x [B, N, D], keep [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(x, keep[:, :, None], axis=1)


BLOCK_METHODS = ("divprune", "random")   # what `block_keep` runs (NeXT, OneVision, Qwen2.5-VL)


def block_keep(tokens: jax.Array, counts, select) -> jax.Array:
    """DivPrune / random over each sample's whole image block (docs/BASELINES.md §9):
    tokens [B, F, Dt] (the rows the LM would see at the image block, first), counts:
    the block length of each sample (host ints, one value for the batch) -> keep
    [B, K], ascending indices into the block. Qwen2.5-VL gathers its prompt through
    them (each kept row keeps its M-RoPE ids); the AnyRes families take the rows."""
    if select.method not in BLOCK_METHODS:
        raise ValueError(f"{select.method} runs on LLaVA-1.5 only; on LLaVA-NeXT, OneVision and "
                         f"Qwen2.5-VL use one of {BLOCK_METHODS}")
    if len(set(counts)) != 1:
        raise ValueError(f"{select.method} needs one image-block length for the whole batch (got "
                         f"{sorted(set(counts))}); batch images of one size together (eval.py "
                         "run groups them by shape_key)")
    n = int(counts[0])
    k = select.count(n)
    if not 1 <= k <= n:
        raise ValueError(f"{select.method} keeps {k} image tokens but the image block has {n}; "
                         f"give a budget in [1, {n}] or a larger image")
    block = tokens[:, :n]
    if select.method == "divprune":
        return divprune_select(_wide(block), k)["keep"]
    # random: sample b depends on (seed, b) only
    return random_select(jax.random.key(select.seed), block.shape[0], k, n)["keep"]


def select_block(tokens: jax.Array, counts, select) -> jax.Array:
    """tokens [B, F, Dt], counts as `block_keep` -> [B, K, Dt], the kept rows in block order."""
    return take_rows(tokens[:, :int(counts[0])], block_keep(tokens, counts, select))


def select_image_tokens(model, params: dict, pixel_values: jax.Array, select,
                        zoo_inputs=None) -> tuple:
    """pixel_values [B, 3, H, W] -> (tokens [B, K, Dt], positions [B, K] or None).

    `model`: a `LlavaModel` (its `vision`, `project` and config); `select`: a
    `SelectConfig`. positions are vision-sequence positions of the kept patches
    (CLS = 0, patch p = p + 1; None for pooled cells), as Stage 1 reports them.
    `zoo_inputs`: CDPruner's ``{"text_embeds": [B, M, P], "text_mask": [B, M]}``
    (each sample's question segments; needs ``params["clip_projection"]``).
    """
    cfg = model.config
    if cfg.vision_feature_select_strategy != "default":
        raise ValueError(f"{select.method} selects among patch tokens; this checkpoint keeps "
                         "CLS (vision_feature_select_strategy='full')")
    layer = cfg.feature_layer_index
    num_patches = cfg.vision.num_patches
    k = select.count(num_patches)
    method = select.method
    vision = model.vision
    if method == "vispruner":
        out = vision.apply(params["vision"], pixel_values, stop_after=layer, probe_layer=layer)
        feats = out.hidden[:, 1:]
        keep = vispruner_select(_wide(feats), _wide(out.probe.cls_attn), k,
                                select.important_ratio)["keep"]
        return model.project(params, take_rows(feats, keep)), keep + 1
    if method == "vscan":
        deep, shallow = cfg.vision.num_hidden_layers - 2, select.shallow_layer
        if not deep <= layer:
            raise ValueError(f"vscan reads CLIP layer {deep} (the second to last); this tower "
                             f"stops at layer {layer}")
        if not shallow < deep:
            raise ValueError(f"vscan's select.shallow_layer={shallow} is not below the deep "
                             f"layer {deep} of this {deep + 2}-layer tower; give a lower one")
        out = vision.apply(params["vision"], pixel_values, stop_after=layer,
                           probe_layer=(shallow, deep))
        projected = model.project(params, out.hidden[:, 1:])
        sel = vscan_select(_wide(out.probe[0].cls_attn), _wide(out.probe[1].cls_attn),
                           projected, k)
        return sel["merged"], sel["keep"] + 1
    if method == "cdpruner" and (zoo_inputs is None or "clip_projection" not in params):
        raise ValueError("cdpruner needs CLIP text embeddings of the question and CLIP's "
                         "visual_projection (a CLIP text tower), which LLaVA checkpoints lack; "
                         "load one with load_llava(..., clip_text_tower=DIR)")
    out = vision.apply(params["vision"], pixel_values, stop_after=layer)
    projected = model.project(params, out.hidden[:, 1:])
    if method == "cdpruner":   # per sample: each image with its own question (docs/BASELINES.md §4)
        embeds = clip_image_embeds(params["vision"]["post_layernorm"], params["clip_projection"],
                                   out.hidden[:, 1:], cfg.vision.layer_norm_eps)
        one = lambda f, ie, te, tm: cdpruner_select(f[None], ie[None], te, k, tm)["keep"][0]
        keep = jax.vmap(one)(_wide(projected), _wide(embeds), _wide(zoo_inputs["text_embeds"]),
                             zoo_inputs["text_mask"])
        return take_rows(projected, keep), keep + 1
    if method == "pool":
        return pool_tokens(projected, k)["tokens"], None
    if method == "divprune":
        keep = divprune_select(_wide(projected), k)["keep"]
    else:                     # random: sample b depends on (seed, b) only
        keep = random_select(jax.random.key(select.seed), projected.shape[0], k,
                             num_patches)["keep"]
    return take_rows(projected, keep), keep + 1
