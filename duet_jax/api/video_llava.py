"""The Video-LLaVA handle `duet_jax.load_llava(path)` returns for a `video_llava` checkpoint.

Same surface as `duet_jax.api.Llava` (`logits`, `encode`, `generate_batch`,
`generate`, `reduction`), with videos next to images:

    model = duet_jax.load_llava("Video-LLaVA-7B-hf")
    model.generate(["What happens?"], videos=["frames_dir/"], reduction="videollava-duet-960")
    model.logits(input_ids, pixel_values_videos=[B, F, 3, H, W])   # or a 5-D pixel_values

A batch is all-image or all-video. Prompts follow HF's format: one `<video>`
(or `<image>`) placeholder, expanded to `video_seq_length` (`image_seq_length`)
ids; a plain question is wrapped in the llava_v1 template Video-LLaVA's eval
scripts use. Frames go through the checkpoint's image processor one by one
(transformers' video processor needs torchvision): resize, centre crop, CLIP
normalisation, no padding, as `VideoLlavaImageProcessor` / the video processor do.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from duet_jax.api.base import Handle
from duet_jax.api.llava import image_logits, load_shardings
from duet_jax.data.conversation import MEDIA_PLACEHOLDER as PLACEHOLDER, build_video_prompt
from duet_jax.data.frames import load_frames
from duet_jax.dtypes import parse_dtype
from duet_jax.models.video_llava import (PARAM_AXES, VideoLlavaConfig, VideoLlavaModel,
                                        view_params)


@dataclasses.dataclass(frozen=True)
class VideoLlava(Handle):
    """The Video-LLaVA handle: images and 8-frame videos, each through its own tower."""
    config: VideoLlavaConfig
    module: VideoLlavaModel

    media = ("image", "video")

    @classmethod
    def load(cls, path: str, *, dtype: str = "float32", compute_dtype: Optional[str] = None,
             mesh=None, vision_tower: Optional[str] = None, remat: bool = False):
        """An HF Video-LLaVA dir or its `python -m convert` output."""
        from duet_jax.checkpoints import load_params
        from duet_jax.models.video_llava import unstack_video_params
        if vision_tower is not None:
            raise ValueError("vision_tower= is for original LLaVA directories; a Video-LLaVA "
                             "checkpoint holds its own towers")
        pdt = parse_dtype(dtype)
        shardings = load_shardings(VideoLlavaModel, PARAM_AXES, path, None, mesh)
        cfg, params = load_params(path, dtype=pdt, shardings=shardings)
        module = VideoLlavaModel(cfg, dtype=parse_dtype(compute_dtype) or pdt, param_dtype=pdt,
                                 remat=remat)
        return cls(cfg, module, unstack_video_params(params), path)

    def reduction(self, reduction, media: str = "video"):
        """Resolves a preset name / config and checks it fits this model (per frame for video)."""
        return super().reduction(reduction, media)

    def check_reduction(self, red, media: str) -> None:
        red.validate(self.config.vision.num_patches, self.config.text.num_hidden_layers,
                     crops=self.config.num_frames if media == "video" else 1)

    def _media(self, input_ids, pixel_values, pixel_values_videos):
        if pixel_values_videos is None and pixel_values is not None and np.ndim(pixel_values) == 5:
            pixel_values, pixel_values_videos = None, pixel_values   # [B, F, 3, H, W] is a video
        media = self.module.media_of(pixel_values, pixel_values_videos)
        other = self.config.image_token_index if media == "video" else self.config.video_token_index
        if bool(np.any(np.asarray(input_ids) == other)):
            raise ValueError(f"this {media} batch also holds {'image' if media == 'video' else 'video'}"
                             " placeholder ids; a batch is all-image or all-video")
        return media, jnp.asarray(pixel_values if media == "image" else pixel_values_videos)

    def logits(self, input_ids, pixel_values=None, attention_mask=None, reduction=None, *,
               pixel_values_videos=None):
        """[B, L', V] float32; rows past each sample's (reduced) length are padding."""
        input_ids = jnp.asarray(input_ids)
        media, pixels = self._media(input_ids, pixel_values, pixel_values_videos)
        view = self.module.view(media)
        view.check_inputs(input_ids, pixels)
        self.check_pixels_used(input_ids, pixels, self.config.media(media).image_token_index,
                               media)
        return image_logits(view, view_params(self.params, media), input_ids, pixels,
                            attention_mask, self.reduction(reduction, media))

    def _pixels(self, image) -> np.ndarray:
        """One image or frame -> [3, H, W] float32: resize, centre crop, normalise, no padding."""
        from duet_jax.data.images import load_image
        img = load_image(image) if isinstance(image, str) else image.convert("RGB")
        proc = self.image_processor
        legacy = {"return_legacy_image_output": False} \
            if type(proc).__name__ == "VideoLlavaImageProcessor" else {}
        out = proc(images=img, return_tensors="np", **legacy)
        # VideoLlavaImageProcessor still names its output pixel_values_images (transformers 5)
        key = "pixel_values" if "pixel_values" in out else "pixel_values_images"
        return np.asarray(out[key][0], np.float32)

    def encode(self, prompts: Sequence[str], images: Optional[Sequence] = None,
               videos: Optional[Sequence] = None) -> dict:
        """User messages + images or videos -> a right-padded batch.

        A message is wrapped by `build_video_prompt` unless it already is a full
        prompt ending in `ASSISTANT:` (with its own `<video>` / `<image>`).
        Returns input_ids, attention_mask, has_image, media and pixel_values
        ([B, 3, H, W]) or pixel_values_videos ([B, F, 3, H, W]).
        """
        from duet_jax.data.tokenize import right_pad, tokenize_prompt
        self.check_batch(prompts, images=images, videos=videos)
        if (images is None) == (videos is None):
            raise ValueError("pass images= or videos= (one per prompt, None for text-only): a "
                             "batch is all-image or all-video")
        media = "image" if videos is None else "video"
        items = list(images if media == "image" else videos)
        if len(prompts) != len(items):
            raise ValueError(f"{len(prompts)} prompts but {len(items)} {media}s; pass one "
                             f"{media} (or None) per prompt")
        cfg = self.config.media(media)
        f, size = self.config.num_frames, self.config.vision.image_size
        ids, pixels = [], []
        for text, item in zip(prompts, items):
            full = text if text.rstrip().endswith("ASSISTANT:") else build_video_prompt(
                text, media if item is not None else None)
            # tokenize_prompt splits on "<image>": the placeholder of this batch's modality
            full = full.replace(PLACEHOLDER["video"], PLACEHOLDER["image"]) if media == "video" else full
            ids.append(tokenize_prompt(full, self.tokenizer, image_token_index=cfg.image_token_index,
                                       image_seq_length=cfg.image_seq_length))
            if item is None:
                shape = (3, size, size) if media == "image" else (f, 3, size, size)
                pixels.append(np.zeros(shape, np.float32))
            elif media == "image":
                pixels.append(self._pixels(item))
            else:
                pixels.append(np.stack([self._pixels(fr) for fr in load_frames(item, f)]))
        input_ids, mask = right_pad(ids, max(len(i) for i in ids), self.tokenizer.pad_token_id or 0)
        key = "pixel_values" if media == "image" else "pixel_values_videos"
        return {"input_ids": input_ids, "attention_mask": mask, key: np.stack(pixels),
                "has_image": np.array([x is not None for x in items]), "media": media}

    def generate_batch(self, batch: dict, *, max_new_tokens: int = 128, reduction=None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        """Token-level generation on an encoded batch -> `Generated` (tokens, lengths, forward)."""
        media = batch.get("media", "video" if "pixel_values_videos" in batch else "image")
        pixels = batch["pixel_values" if media == "image" else "pixel_values_videos"]
        return self._generate(self.module.view(media), view_params(self.params, media), batch,
                              pixels, self.reduction(reduction, media),
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed, media="an image or video")
