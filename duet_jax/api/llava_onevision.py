"""`duet_jax.load_llava(path)` for LLaVA-OneVision checkpoints (`model_type: llava_onevision`).

The LLaVA-NeXT handle (`duet_jax.api.LlavaNext`: AnyRes images through the
checkpoint's own processor, canonical-size buckets, one block per image) with
OneVision's pieces: `LlavaOnevisionImageProcessorPil`, the Qwen chat template
LLaVA-OneVision is evaluated with (`qwen_1_5`: system turn, `<image>` on its
own line before the question), HF's `anyres_max_N` token counts, and videos:

    model.generate(["What happens?"], videos=["frames_dir/"])   # num_frames frames each
    model.logits(input_ids, pixel_values_videos=[B, F, 3, S, S])

Video frames are the base crop the image processor makes of each frame (a
plain resize to S x S + normalisation, what the OneVision video processor does),
and a video block is `F * ceil(n/2)^2 + 1` ids of `video_token_index`.
A batch is all-image or all-video.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from duet_jax.api.llava import _logits
from duet_jax.api.llava_next import LlavaNext, as_images
from duet_jax.models import onevision_layout as layout
from duet_jax.models.onevision import PARAM_AXES, OnevisionModel
from duet_jax.models.onevision_layout import OnevisionConfig
from duet_jax.models.onevision_reduced import check_stage1

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
ASSISTANT = "<|im_start|>assistant\n"


def onevision_prompt(text: str, placeholder: str = "<image>") -> str:
    """A user message in the qwen_1_5 template, `placeholder` on the line before it."""
    return f"{SYSTEM}<|im_start|>user\n{placeholder}\n{text}<|im_end|>\n{ASSISTANT}"


@dataclasses.dataclass(frozen=True)
class LlavaOnevision(LlavaNext):
    """LLaVA-OneVision handle: images (`NextImages` / pixel_values + image_sizes) and videos."""
    config: OnevisionConfig
    module: OnevisionModel
    module_class = OnevisionModel
    param_axes = PARAM_AXES
    media = ("image", "video")
    kept_pictures = False        # kept-token pictures read CLS-layout positions (CLIP families)

    @functools.cached_property
    def image_processor(self):
        from transformers import LlavaOnevisionImageProcessorPil
        return LlavaOnevisionImageProcessorPil.from_pretrained(self.path, local_files_only=True)

    def full_prompt(self, text: str) -> str:
        return text if text.endswith(ASSISTANT) else onevision_prompt(text)

    def block_size(self, size_hw) -> int:
        return layout.num_image_tokens(self.config, size_hw)

    def shape_key(self, path: str) -> tuple:
        """An image file's canonical size; () for a video (a frame folder or array file):
        every video of a run has `num_frames` frames of one size."""
        import os
        if os.path.isdir(path) or path.endswith(".npy"):
            return ()
        return super().shape_key(path)

    def check_reduction(self, red, media: str = "image") -> None:
        if red.stage1 is not None:
            check_stage1(red.stage1)
        frames = self.config.num_frames if media == "video" else self.max_crops
        red.validate(self.config.vision.num_patches, self.config.text.num_hidden_layers,
                     crops=frames)

    def _pixels(self, input_ids, pixel_values, image_sizes, pixel_values_videos):
        if pixel_values_videos is not None:
            return "video", jnp.asarray(pixel_values_videos)
        if image_sizes is None and not hasattr(pixel_values, "sizes"):
            if np.ndim(pixel_values) == 5 and bool(np.any(
                    np.asarray(input_ids) == self.config.video_token_index)):
                return "video", jnp.asarray(pixel_values)     # a 5-D video passed as pixel_values
        return "image", as_images(pixel_values, image_sizes)

    def logits(self, input_ids, pixel_values=None, attention_mask=None, reduction=None,
               image_sizes=None, *, pixel_values_videos=None):
        """[B, L', V] float32; rows past each sample's (reduced) length are padding."""
        input_ids = jnp.asarray(input_ids)
        media, pixels = self._pixels(input_ids, pixel_values, image_sizes, pixel_values_videos)
        self.module.check_inputs(input_ids, pixels)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        logits, _ = _logits(self.module, self.params, input_ids, pixels,
                            jnp.asarray(attention_mask), self.reduction(reduction, media), True)
        return logits

    def encode(self, prompts: Sequence[str], images: Optional[Sequence] = None,
               videos: Optional[Sequence] = None, *, bucket: bool = True) -> dict:
        """Messages + images (NeXT's encode with this family's template and counts) or
        + videos (frame folders, frame lists or arrays; `config.num_frames` each)."""
        if videos is None:
            return dict(super().encode(prompts, images, None, bucket=bucket), media="image")
        if images is not None:
            raise ValueError("pass images= or videos=, not both: a batch is all-image or all-video")
        from duet_jax.data.frames import load_frames
        from duet_jax.data.tokenize import expand_image_placeholders, right_pad
        videos = list(videos)
        if len(videos) != len(prompts) or any(v is None for v in videos):
            raise ValueError(f"{len(prompts)} prompts need {len(prompts)} videos (got "
                             f"{sum(v is not None for v in videos)}); one video per prompt")
        cfg, f = self.config, self.config.num_frames
        ids, pixels = [], []
        for text, video in zip(prompts, videos):
            whole = np.asarray(self.tokenizer(self.full_prompt(text))["input_ids"])
            if (whole == cfg.image_token_index).sum() != 1:
                raise ValueError(f"prompt {text[:40]!r}... must hold exactly one <image> "
                                 "placeholder (it marks the video)")
            ids.append(expand_image_placeholders(
                whole, None, image_token_index=cfg.video_token_index,
                placeholder=cfg.image_token_index,
                image_seq_length=layout.num_video_tokens(cfg, f))[0])
            frames = load_frames(video, f)
            enc = self.image_processor(images=frames, return_tensors="np")
            pixels.append(np.asarray(enc["pixel_values"][:, 0], np.float32))   # base crops
        input_ids, mask = right_pad(ids, max(len(i) for i in ids), self.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask,
                "pixel_values_videos": np.stack(pixels), "media": "video",
                "has_image": np.ones(len(prompts), bool)}

    def generate_batch(self, batch: dict, *, max_new_tokens: int = 128, reduction=None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        """Token-level generation on an encoded batch -> `Generated` (tokens, lengths, forward)."""
        media = batch.get("media", "video" if "pixel_values_videos" in batch else "image")
        pixels = batch["pixel_values_videos" if media == "video" else "pixel_values"]
        return self._generate(self.module, self.params, batch, pixels,
                              self.reduction(reduction, media), max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, seed=seed,
                              media="an image or video")
