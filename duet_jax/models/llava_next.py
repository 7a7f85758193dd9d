"""LLaVA-NeXT (AnyRes): HF `LlavaNextForConditionalGeneration` semantics in JAX.

Unreduced path = HF exactly: every crop (base image + G grid tiles) runs
through the CLIP tower, the projector maps patch features, and
`pack_image_features` order is a host-computed gather (base crop rows, then
the unpadded tile canvas in raster order with an `image_newline` row after
each canvas row); the block replaces the image-token ids of the prompt.

Reduced path (docs/ALGORITHM.md §2.6, §6 D13): Stage 1 per crop (`vision_merge`),
block = base crop's K rows; tiles' dominant patches in global canvas raster
order; the G tile CLS rows; the G x C contextual rows tile-major; no unpad or
newline rows; `(1 + G) K` tokens. Stage 2 runs on that whole block with
per-sample counts (`duet_jax.models.segments`).

Static-shape strategy: images travel as `NextImages`, a pytree whose only
array is `pixels [B, P, 3, S, S]` (the processor's output, P = batch-max
crops) and whose static aux data are the original image sizes. Every
count, gather map and buffer length is a NumPy function of the sizes, so a
jitted call compiles once per distinct tuple of sizes (and shapes); blocks
are padded to the batch maximum and masked. Only the valid crops
(sum_b (1 + G_b)) run through the tower.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models import anyres
from duet_jax.models.anyres import LlavaNextConfig
from duet_jax.models.llava import PARAM_AXES as LLAVA_PARAM_AXES, Forward, ImageFeatures, LlavaModel
from duet_jax.models.segments import Sequence, run_language_model
from duet_jax.models.zoo import select_block
from duet_jax.labels import IGNORE_INDEX


@jax.tree_util.register_pytree_node_class
class NextImages:
    """pixels [B, P, 3, S, S] float (P >= every image's crop count) + static sizes ((H, W), ...)."""

    def __init__(self, pixels, sizes):
        self.pixels = pixels
        self.sizes = tuple((int(h), int(w)) for h, w in np.asarray(sizes).reshape(-1, 2))

    def tree_flatten(self):
        return (self.pixels,), self.sizes

    @classmethod
    def tree_unflatten(cls, sizes, children):
        obj = object.__new__(cls)
        obj.pixels, obj.sizes = children[0], sizes
        return obj

    @property
    def shape(self):     # the batch dimension, for shape checks shared with LLaVA-1.5
        return self.pixels.shape


@dataclasses.dataclass(frozen=True)
class LlavaNextModel(LlavaModel):
    """`model.apply(params, input_ids, NextImages(...), ...)`; params add `image_newline [Dt]`."""
    config: LlavaNextConfig

    def init(self, rng: jax.Array) -> dict:
        k_base, k_nl = jax.random.split(rng)
        params = super().init(k_base)
        dt = self.config.text.hidden_size
        params["image_newline"] = (jax.random.normal(k_nl, (dt,)) / np.sqrt(dt)).astype(
            self.param_dtype)
        return params

    # ---- host-side layout -------------------------------------------------
    def crop_counts(self, images: NextImages) -> list:
        counts = [anyres.num_crops(self.config, s) for s in images.sizes]
        if len(counts) != images.pixels.shape[0]:
            raise ValueError(f"{len(counts)} image sizes for {images.pixels.shape[0]} images")
        if max(counts) > images.pixels.shape[1]:
            raise ValueError(f"an image of size {images.sizes[int(np.argmax(counts))]} needs "
                             f"{max(counts)} crops but pixel_values has {images.pixels.shape[1]}; "
                             "use LlavaNextImageProcessor output with its image_sizes")
        return counts

    def token_counts(self, images: NextImages, reduction=None) -> tuple:
        """Image tokens per sample entering the LM (HF count, or (1+G) K when reduced)."""
        if reduction is None or reduction.stage1 is None:
            return tuple(anyres.num_image_tokens(self.config, s) for s in images.sizes)
        k = reduction.stage1.output_size(self.config.vision.num_patches)
        return tuple(anyres.reduced_block_size(self.config, s, k) for s in images.sizes)

    def _valid_crops(self, images: NextImages):
        counts = self.crop_counts(images)
        b, p = images.pixels.shape[:2]
        flat = np.array([i * p + c for i, n in enumerate(counts) for c in range(n)])
        pixels = images.pixels.reshape((b * p,) + images.pixels.shape[2:])[flat]
        return pixels, counts, np.concatenate([[0], np.cumsum(counts)[:-1]])

    # ---- image features ---------------------------------------------------
    def image_features(self, params: dict, images: NextImages, stage1=None) -> ImageFeatures:
        """-> tokens [B, F, Dt] (F = batch-max block; rows past a sample's count are padding)."""
        if stage1 is not None:
            return self._merged_features(params, images, stage1)
        pixels, counts, offsets = self._valid_crops(images)
        out = self.vision.apply(params["vision"], pixels, stop_after=self.config.feature_layer_index)
        feats = self.project(params, out.hidden[:, 1:])                     # [Ctot, N, Dt]
        ctot, n, dt = feats.shape
        pool = jnp.concatenate([feats.reshape(ctot * n, dt),
                                params["image_newline"].astype(self.dtype)[None]], axis=0)
        idx = [np.where(ix < 0, ctot * n, ix + off * n)
               for ix, off in zip((anyres.pack_index(self.config, s) for s in images.sizes),
                                  offsets)]
        width = max(len(i) for i in idx)
        index = np.stack([np.pad(i, (0, width - len(i))) for i in idx])
        return ImageFeatures(pool[index], None)

    def _merged_features(self, params: dict, images: NextImages, stage1) -> ImageFeatures:
        """Stage 1 per crop, then the NeXT block layout (docs/ALGORITHM.md §2.6) via one
        static-size sort."""
        from duet_jax.reduction import vision_merge   # models call reduction, never the reverse
        if stage1.mode == "paper" or not stage1.cls_token:
            raise ValueError("the LLaVA-NeXT layout needs a CLS-carrying Stage 1 "
                             "(mode 'duet' or 'visionzip')")
        pixels, counts, offsets = self._valid_crops(images)
        layer = self.config.feature_layer_index
        out = self.vision.apply(params["vision"], pixels, stop_after=layer, probe_layer=layer)
        merged = vision_merge(out.probe.cls_attn, out.hidden, out.probe.metric,
                              dominant=stage1.dominant, contextual=stage1.contextual,
                              width=stage1.width, mode=stage1.mode)
        tokens = self.project(params, merged.tokens)                           # [Ctot, K, Dt]
        k, d, n = tokens.shape[1], stage1.dominant, self.config.vision.num_patches
        c, g_max, b = k - d, max(counts) - 1, len(counts)
        # candidate crops per sample: base + G_max tile slots (missing tiles repeat the base)
        slot = np.arange(1 + g_max)[None, :]
        cand = np.where(slot < np.array(counts)[:, None], offsets[:, None] + slot,
                        offsets[:, None])                                      # [B, 1+G_max]
        rows = tokens[cand].reshape(b, (1 + g_max) * k, -1)
        # sort keys: base rows < tile dominant patches (canvas raster) < tile CLS < contextual
        ti = np.arange(g_max)[:, None]
        cls_key = k + g_max * n + ti                                           # [G_max, 1]
        ctx_key = k + g_max * n + g_max + ti * c + np.arange(c)[None, :]       # [G_max, C]
        last = k + g_max * n + g_max + g_max * c
        canvas = np.stack([anyres.tile_canvas_index(self.config, s, g_max) for s in images.sizes])
        patch = merged.positions[cand[:, 1:]][..., 1:d] - 1                    # [B, G_max, d-1]
        dom_key = k + jnp.take_along_axis(jnp.asarray(canvas), patch, axis=-1)
        tile_keys = jnp.concatenate([jnp.broadcast_to(cls_key, (b, g_max, 1)), dom_key,
                                     jnp.broadcast_to(ctx_key, (b, g_max, c))], axis=-1)
        missing = slot[:, 1:, None] >= np.array(counts)[:, None, None]          # [B, G_max, 1]
        filler = last + np.arange(g_max * k).reshape(1, g_max, k)
        tile_keys = jnp.where(missing, filler, tile_keys)
        keys = jnp.concatenate([jnp.broadcast_to(jnp.arange(k), (b, k)),
                                tile_keys.reshape(b, g_max * k)], axis=1)
        order = jnp.argsort(keys, axis=1, stable=True)[:, :max(counts) * k]
        feats = jnp.take_along_axis(rows, order[..., None], axis=1)
        return ImageFeatures(feats, None, merged)

    # ---- splice -----------------------------------------------------------
    def splice_varlen(self, params: dict, input_ids, feats, n_ids: tuple, n_feats: tuple,
                      attention_mask=None, labels=None, prompt_lengths=None, salient_mask=None,
                      out_len: Optional[int] = None) -> Sequence:
        """`LlavaModel.splice` with per-sample block sizes: sample b's n_ids[b] image ids
        become its first n_feats[b] rows of feats [B, F, Dt]. Every sample has an image."""
        b, length = input_ids.shape
        diff = jnp.asarray(np.subtract(n_ids, n_feats), jnp.int32)
        k = jnp.asarray(n_feats, jnp.int32)[:, None]
        # shrink by the batch's smallest saving: every sample still fits, and a
        # reduced batch runs the LM on its reduced length, not on HF's
        out_len = length - int(np.min(np.subtract(n_ids, n_feats))) if out_len is None else out_len
        valid_in = jnp.ones((b, length), bool) if attention_mask is None else attention_mask.astype(bool)
        labels = jnp.full((b, length), IGNORE_INDEX, jnp.int32) if labels is None else labels.astype(jnp.int32)
        is_img = (input_ids == self.config.image_token_index) & valid_in
        start = jnp.argmax(is_img, axis=1).astype(jnp.int32)
        j = jnp.arange(out_len)[None, :]
        st = start[:, None]
        src = jnp.where(j < st, j, jnp.where(j < st + k, length + j - st, j + diff[:, None]))
        new_len = valid_in.sum(1) - diff
        valid = j < new_len[:, None]
        src = jnp.where(valid, src, 0)
        pool = jnp.concatenate([self.text.embed(params["text"], input_ids), feats.astype(self.dtype)], 1)
        hidden = jnp.where(valid[..., None], jnp.take_along_axis(pool, src[..., None], axis=1), 0)
        lab_pool = jnp.concatenate([labels, jnp.full(feats.shape[:2], IGNORE_INDEX, jnp.int32)], 1)
        labels = jnp.where(valid, jnp.take_along_axis(lab_pool, src, axis=1), IGNORE_INDEX)
        prompt_len = valid_in.sum(1) if prompt_lengths is None else prompt_lengths
        prompt = valid & (j < (prompt_len - diff)[:, None])
        if salient_mask is None:
            salient = jnp.zeros((b, out_len), bool)
        else:
            sal_pool = jnp.concatenate([salient_mask.astype(bool), jnp.zeros(feats.shape[:2], bool)], 1)
            salient = valid & jnp.take_along_axis(sal_pool, src, axis=1)
        return Sequence(hidden, valid, jnp.where(valid, j, 0).astype(jnp.int32), labels, start,
                        jnp.ones((b,), bool), prompt, salient)

    def check_inputs(self, input_ids, images) -> None:
        """Host-side checks: one NextImages image per sample, HF's image-token count each."""
        if not isinstance(images, NextImages):
            raise ValueError("LLaVA-NeXT takes NextImages(pixel_values [B, P, 3, S, S], "
                             "image_sizes [B, 2]); pass the processor's image_sizes too")
        n_img = np.asarray(jax.device_get(input_ids == self.config.image_token_index)).sum(1)
        if images.pixels.shape[0] != len(n_img):
            raise ValueError(f"pixel_values has batch {images.pixels.shape[0]} but input_ids has "
                             f"{len(n_img)}; pass one image per sample")
        want = self.token_counts(images)
        bad = [i for i, (n, w) in enumerate(zip(n_img, want)) if n != w]
        if bad:
            i = bad[0]
            raise ValueError(f"sample {i} has {int(n_img[i])} image tokens but its image of size "
                             f"{images.sizes[i]} needs {want[i]}; build prompts with "
                             "LlavaNextProcessor (or duet_jax's NeXT encode)")
        self.crop_counts(images)

    # ---- forward ----------------------------------------------------------
    def forward(self, params: dict, input_ids, pixel_values, attention_mask=None, labels=None,
                reduction=None, images_in_every_sample: bool = True, *, train: bool = False,
                prompt_lengths=None, salient_mask=None, segment_lengths=None,
                return_kv: bool = False, splice_length: Optional[int] = None,
                zoo_inputs=None) -> Forward:
        """As `LlavaModel.forward`; pixel_values is `NextImages` and every sample has an image.
        A `select` section (DivPrune, random) picks rows of the whole image block
        (`duet_jax.models.zoo.select_block`); `zoo_inputs`: none of those reads one."""
        if not images_in_every_sample or segment_lengths is not None:
            raise ValueError("LLaVA-NeXT batches need an image in every sample and host-default "
                             "segment lengths")
        stage1 = reduction.stage1 if reduction is not None else None
        stage2 = reduction.stage2 if reduction is not None else None
        select = reduction.select if reduction is not None else None
        feats = self.image_features(params, pixel_values, stage1)
        n_ids = self.token_counts(pixel_values)
        n_feats = self.token_counts(pixel_values, reduction)
        if select is not None:   # a zoo method over the whole block replaces Stage 1
            feats = ImageFeatures(select_block(feats.tokens, n_ids, select), None)
            n_feats = (feats.tokens.shape[1],) * len(n_ids)
        seq = self.splice_varlen(params, input_ids, feats.tokens, n_ids, n_feats, attention_mask,
                                 labels, prompt_lengths, salient_mask, splice_length)
        seq, segments, kept = run_language_model(
            self.text, params["text"], seq, n_feats, stage2, train=train, return_kv=return_kv)
        return Forward(seq, tuple(segments), tuple(kept), feats)


# Logical axes (`duet_jax.sharding`): LLaVA-1.5's table plus the newline row, a [Dt]
# vector replicated like the norms.
PARAM_AXES = {**LLAVA_PARAM_AXES, ("image_newline",): (None,)}
