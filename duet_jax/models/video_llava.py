"""Video-LLaVA with the semantics of HF `VideoLlavaForConditionalGeneration`.

Two CLIP towers of one config (`image_tower`, `video_tower`), one projector, one
Llama. HF's two paths differ in what they keep (modeling_video_llava.py):

* image: `image_tower` hidden_states[vision_feature_layer], CLS dropped under the
  "default" strategy -> `image_seq_length` (= N) tokens per image;
* video: frames `[B, F, 3, H, W]` run through `video_tower` as a `[B*F]` batch,
  hidden_states[vision_feature_layer] **with** the CLS row of every frame (no
  select strategy) -> `video_seq_length` = F * (N+1) tokens, frame-major.

Both then splice into the LM exactly like LLaVA-1.5, so each modality is a
`LlavaModel` "view" (`VideoLlavaModel.view(media)`) over the params of its tower:
the reduced path, generation and the KV caches are LLaVA's unchanged. Stage 1
runs per frame (docs/ALGORITHM.md §2.6: per-frame `d, c`, frames concatenated in time
order), Stage 2 treats the `F * K` block as one image block (docs/ALGORITHM.md §6 D14).

A batch is all-image or all-video (one static modality per call); HF's mixed
image + video prompts are rejected with a one-line error by the container.

Params: {"image_tower": CLIP, "video_tower": CLIP, "projector": ..., "text": Llama},
each laid out as in `duet_jax.models.config`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from duet_jax.models.config import LlavaConfig, TextConfig, VisionConfig, _pick
from duet_jax.models.clip import PARAM_AXES as CLIP_PARAM_AXES
from duet_jax.models.llava import (PARAM_AXES as LLAVA_PARAM_AXES, ImageFeatures, LlavaModel,
                                   prefixed)

MEDIA = ("image", "video")


@dataclasses.dataclass(frozen=True)
class VideoLlavaConfig:
    """Defaults are HF `VideoLlavaConfig`'s (CLIP-L/14 at 224 px: 256 patches, 8 frames)."""
    vision: VisionConfig = VisionConfig(image_size=224)
    text: TextConfig = TextConfig()
    image_token_index: int = 32000
    video_token_index: int = 32001
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    multimodal_projector_bias: bool = True
    image_seq_length: int = 256
    video_seq_length: int = 2056

    def __post_init__(self):
        per_frame = self.vision.num_patches + 1
        if self.video_seq_length % per_frame:
            raise ValueError(f"video_seq_length={self.video_seq_length} is not a multiple of the "
                             f"{per_frame} tokens per frame (patches + CLS); fix config.json")
        if self.image_token_index == self.video_token_index:
            raise ValueError("image_token_index and video_token_index are equal; fix config.json")
        self.media("image")   # validates strategy / feature layer through LlavaConfig

    @property
    def num_frames(self) -> int:
        return self.video_seq_length // (self.vision.num_patches + 1)

    def media(self, kind: str) -> LlavaConfig:
        """The LLaVA-1.5 config that one modality's path is equivalent to."""
        if kind not in MEDIA:
            raise ValueError(f"media {kind!r}; use one of {MEDIA}")
        video = kind == "video"
        return LlavaConfig(
            vision=self.vision, text=self.text,
            image_token_index=self.video_token_index if video else self.image_token_index,
            projector_hidden_act=self.projector_hidden_act,
            vision_feature_layer=self.vision_feature_layer,
            # HF's video path keeps every frame's CLS row whatever the strategy says.
            vision_feature_select_strategy="full" if video else self.vision_feature_select_strategy,
            multimodal_projector_bias=self.multimodal_projector_bias,
            image_seq_length=self.video_seq_length if video else self.image_seq_length)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "VideoLlavaConfig":
        vision = VisionConfig.from_hf(d.get("vision_config") or {})
        text = TextConfig.from_hf(d.get("text_config") or {})
        d = dict(d)
        for ours, alias in (("image_token_index", "image_token_id"),
                            ("video_token_index", "video_token_id")):
            if alias in d and ours not in d:
                d[ours] = d[alias]
        d.pop("vision_config", None)
        d.pop("text_config", None)
        return _pick(d, cls, vision=vision, text=text)

    def to_hf(self) -> dict:
        """The HF `VideoLlavaConfig` dict (enough for from_pretrained)."""
        base = self.media("image").to_hf()
        top = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("vision", "text")}
        return dict(base, **top, model_type="video_llava",
                    architectures=["VideoLlavaForConditionalGeneration"])


@dataclasses.dataclass(frozen=True)
class VideoFramesModel(LlavaModel):
    """LLaVA view of the video path: pixel_values [B, F, 3, H, W] -> F*K tokens per sample."""
    num_frames: int = 8

    def image_features(self, params: dict, pixel_values: jax.Array, stage1=None) -> ImageFeatures:
        """[B, F, 3, H, W] -> tokens [B, F*K, Dt], frames in time order.

        Stage 1 (if any) runs on every frame separately: the frames are one
        `[B*F]` batch of the tower and of `vision_merge`. `positions` are
        block positions `frame * (N+1) + vision position`; `merge` stays per frame.
        """
        if pixel_values.ndim != 5 or pixel_values.shape[1] != self.num_frames:
            raise ValueError(f"pixel_values_videos has shape {tuple(pixel_values.shape)}; expected "
                             f"[B, {self.num_frames}, 3, H, W] ({self.num_frames} frames per video, "
                             "from video_seq_length in config.json)")
        b, f = pixel_values.shape[:2]
        out = super().image_features(params, pixel_values.reshape((b * f,) + pixel_values.shape[2:]),
                                     stage1)
        k = out.tokens.shape[1]
        tokens = out.tokens.reshape(b, f * k, out.tokens.shape[-1])
        positions = None
        if out.positions is not None:
            offset = (self.config.vision.num_patches + 1) * jnp.arange(f, dtype=jnp.int32)
            positions = (out.positions.reshape(b, f, k) + offset[None, :, None]).reshape(b, f * k)
        return ImageFeatures(tokens, positions, out.merge)

    def check_inputs(self, input_ids, pixel_values) -> None:
        super().check_inputs(input_ids, pixel_values)
        if pixel_values is not None and (pixel_values.ndim != 5
                                         or pixel_values.shape[1] != self.num_frames):
            raise ValueError(f"pixel_values_videos has shape {tuple(pixel_values.shape)}; expected "
                             f"[B, {self.num_frames}, 3, H, W]")


def view_params(params: dict, media: str) -> dict:
    """The LLaVA-layout params of one modality (references, no copies)."""
    return {"vision": params[f"{media}_tower"], "projector": params["projector"],
            "text": params["text"]}


@dataclasses.dataclass(frozen=True)
class VideoLlavaModel:
    """Pure Video-LLaVA: `model.apply(params, input_ids, pixel_values=..., pixel_values_videos=...)`."""
    config: VideoLlavaConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def view(self, media: str) -> LlavaModel:
        cfg = self.config.media(media)
        if media == "video":
            return VideoFramesModel(cfg, self.dtype, self.param_dtype, self.remat,
                                    num_frames=self.config.num_frames)
        return LlavaModel(cfg, self.dtype, self.param_dtype, self.remat)

    def init(self, rng: jax.Array) -> dict:
        k_image, k_video = jax.random.split(rng)
        image = self.view("image").init(k_image)
        return {"image_tower": image["vision"], "video_tower": self.view("video").vision.init(k_video),
                "projector": image["projector"], "text": image["text"]}

    @staticmethod
    def media_of(pixel_values=None, pixel_values_videos=None) -> str:
        if (pixel_values is None) == (pixel_values_videos is None):
            raise ValueError("pass exactly one of pixel_values (images) and pixel_values_videos "
                             "(videos): a batch is all-image or all-video")
        return "image" if pixel_values is not None else "video"

    def apply(self, params: dict, input_ids: jax.Array, pixel_values=None, attention_mask=None,
              labels=None, reduction=None, *, pixel_values_videos=None, **kwargs):
        """Logits [B, L', V] float32 and the final `Sequence` (see `LlavaModel.apply`)."""
        media = self.media_of(pixel_values, pixel_values_videos)
        pixels = pixel_values if media == "image" else pixel_values_videos
        return self.view(media).apply(view_params(params, media), input_ids, pixels,
                                      attention_mask, labels, reduction, **kwargs)


def unstack_video_params(params: dict) -> dict:
    """Inference layout (per-layer tuples) of both towers and the LM; see `unstack_params`."""
    from duet_jax.models.common import unstack_layers
    out = dict(params)
    for part in ("image_tower", "video_tower", "text"):
        if not isinstance(params[part]["layers"], tuple):
            out[part] = {**params[part], "layers": unstack_layers(params[part]["layers"])}
    return out


# Logical axes (`duet_jax.sharding`): LLaVA-1.5's projector and LM, and the CLIP table
# under each of the two towers.
PARAM_AXES = {**{k: v for k, v in LLAVA_PARAM_AXES.items() if k[0] != "vision"},
              **prefixed("image_tower", CLIP_PARAM_AXES), **prefixed("video_tower", CLIP_PARAM_AXES)}
