"""LLaVA-OneVision: HF `LlavaOnevisionForConditionalGeneration` semantics in JAX.

SigLIP tower (`duet_jax.models.siglip`, no CLS) -> LLaVA's 2-layer projector ->
Qwen2 LM (`duet_jax.models.qwen2`, plain 1-D RoPE: every position id is the
token index, as in HF). It is LLaVA-NeXT's assembly (`LlavaNextModel`: the
valid crops of `NextImages` through the tower, the per-sample splice, the
shared LM runner) with OneVision's packing in place of NeXT's gather:

* images: `onevision_layout.image_taps` (base crop, unpadded canvas resized to
  at most `anyres_max_N` crops, `image_newline` per canvas row);
* videos: `pixel_values` [B, F, 3, S, S] (a plain array, every sample F
  frames); every frame through the tower, 2x2 bilinear pooling, one newline at
  the end (`onevision_layout.video_taps`). Video blocks are marked by
  `video_token_index` in the prompt; the splice reads them as image blocks.

A batch holds images or videos, not both. Stage 1: docs/ALGORITHM.md §2.9
(`duet_jax.models.onevision_reduced`); Stage 2 (docs/ALGORITHM.md §3) runs on the
whole block.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models import onevision_layout as layout
from duet_jax.models.llava import PARAM_AXES as LLAVA_PARAM_AXES, ImageFeatures, prefixed
from duet_jax.models.llava_next import LlavaNextModel, NextImages
from duet_jax.models.onevision_layout import OnevisionConfig
from duet_jax.models.onevision_reduced import merged_features, reduced_counts
from duet_jax.models.qwen2 import PARAM_AXES as QWEN2_PARAM_AXES, Qwen2Model
from duet_jax.models.siglip import PARAM_AXES as SIGLIP_PARAM_AXES, SiglipVisionTower


def is_video(pixel_values) -> bool:
    return not isinstance(pixel_values, NextImages)


def apply_taps(pool: jax.Array, taps: list, fill: int) -> jax.Array:
    """pool [R, D]; taps [(index [F_b, 4], weight [F_b, 4])] per sample -> [B, F, D]
    (F = the batch max; padding rows read row `fill` with weight 0)."""
    width = max(len(i) for i, _ in taps)
    index = np.stack([np.pad(i, ((0, width - len(i)), (0, 0)), constant_values=fill)
                      for i, _ in taps])
    weight = np.stack([np.pad(w, ((0, width - len(w)), (0, 0))) for _, w in taps])
    rows = pool[index]                                                     # [B, F, 4, D]
    return jnp.einsum("bftd,bft->bfd", rows, jnp.asarray(weight, rows.dtype))


@dataclasses.dataclass(frozen=True)
class OnevisionModel(LlavaNextModel):
    """`model.apply(params, input_ids, NextImages(...) or videos [B, F, 3, S, S], ...)`."""
    config: OnevisionConfig

    @property
    def vision(self) -> SiglipVisionTower:
        return SiglipVisionTower(self.config.vision, self.dtype, self.param_dtype)

    @property
    def text(self) -> Qwen2Model:
        return Qwen2Model(self.config.text, self.dtype, self.param_dtype, self.remat)

    # ---- host-side layout -------------------------------------------------
    def token_counts(self, pixel_values, reduction=None) -> tuple:
        """Visual tokens per sample entering the LM (HF's count, or the reduced one)."""
        cfg = self.config
        if reduction is not None and reduction.stage1 is not None:
            return reduced_counts(self, pixel_values, reduction.stage1)
        if is_video(pixel_values):
            return (layout.num_video_tokens(cfg, pixel_values.shape[1]),) * pixel_values.shape[0]
        return tuple(layout.num_image_tokens(cfg, s) for s in pixel_values.sizes)

    def block_token(self, pixel_values) -> int:
        cfg = self.config
        return cfg.video_token_index if is_video(pixel_values) else cfg.image_token_index

    def crops(self, pixel_values):
        """-> (crops [C, 3, S, S] through the tower, per-sample counts, first-crop offsets)."""
        if not is_video(pixel_values):
            return self._valid_crops(pixel_values)
        b, f = pixel_values.shape[:2]
        counts = [f] * b
        return (jnp.reshape(pixel_values, (b * f,) + tuple(pixel_values.shape[2:])), counts,
                np.arange(b) * f)

    # ---- image / video features ---------------------------------------------
    def image_features(self, params: dict, pixel_values, stage1=None) -> ImageFeatures:
        """-> tokens [B, F, Dt] (F = batch-max block; rows past a sample's count are padding)."""
        if stage1 is not None:
            return merged_features(self, params, pixel_values, stage1)
        pixels, counts, offsets = self.crops(pixel_values)
        out = self.vision.apply(params["vision"], pixels, stop_after=self.config.feature_layer_index)
        feats = self.project(params, out.hidden)                             # [Ctot, N, Dt]
        ctot, n, dt = feats.shape
        pool = jnp.concatenate([feats.reshape(ctot * n, dt),
                                params["image_newline"].astype(self.dtype)[None]], axis=0)
        if is_video(pixel_values):
            taps = [layout.video_taps(self.config, counts[0])] * len(counts)
        else:
            taps = [layout.image_taps(self.config, s) for s in pixel_values.sizes]
        taps = [(np.where(i < 0, ctot * n, i + off * n), w) for (i, w), off in zip(taps, offsets)]
        return ImageFeatures(apply_taps(pool, taps, ctot * n), None)

    # ---- splice / checks --------------------------------------------------
    def splice_varlen(self, params: dict, input_ids, feats, n_ids: tuple, n_feats: tuple,
                      attention_mask=None, labels=None, prompt_lengths=None, salient_mask=None,
                      out_len: Optional[int] = None):
        """NeXT's splice; a video block (video_token_index ids) is spliced as an image block."""
        cfg = self.config
        input_ids = jnp.where(input_ids == cfg.video_token_index, cfg.image_token_index, input_ids)
        return super().splice_varlen(params, input_ids, feats, n_ids, n_feats, attention_mask,
                                     labels, prompt_lengths, salient_mask, out_len)

    def check_inputs(self, input_ids, pixel_values) -> None:
        """Host-side checks: one image or video per sample, HF's token count each."""
        if is_video(pixel_values) and np.ndim(pixel_values) != 5:
            raise ValueError(f"videos have shape {np.shape(pixel_values)}; LLaVA-OneVision takes "
                             "NextImages for images or [B, frames, 3, S, S] for videos")
        token = self.block_token(pixel_values)
        n_blk = np.asarray(jax.device_get(input_ids == token)).sum(1)
        if pixel_values.shape[0] != len(n_blk):
            raise ValueError(f"pixel_values has batch {pixel_values.shape[0]} but input_ids has "
                             f"{len(n_blk)}; pass one image or video per sample")
        want = self.token_counts(pixel_values)
        bad = [i for i, (n, w) in enumerate(zip(n_blk, want)) if n != w]
        if bad:
            what = "video" if is_video(pixel_values) else "image"
            raise ValueError(f"sample {bad[0]} has {int(n_blk[bad[0]])} {what} tokens (id {token}) "
                             f"but needs {want[bad[0]]}; build prompts with "
                             "LlavaOnevisionProcessor (or duet_jax's OneVision encode)")
        if not is_video(pixel_values):
            self.crop_counts(pixel_values)


# Logical axes (`duet_jax.sharding`): the SigLIP and Qwen2 tables, LLaVA's projector
# pair and the replicated newline row.
PARAM_AXES = {
    **prefixed("vision", SIGLIP_PARAM_AXES),
    **prefixed("text", QWEN2_PARAM_AXES),
    **{k: v for k, v in LLAVA_PARAM_AXES.items() if k[0] == "projector"},
    ("image_newline",): (None,),
}
