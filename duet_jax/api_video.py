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
import os
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from duet_jax.api import Handle, image_logits
from duet_jax.models.video_llava import VideoLlavaConfig, VideoLlavaModel, view_params

SYSTEM_LLAVA_V1 = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
PLACEHOLDER = {"image": "<image>", "video": "<video>"}


def build_video_prompt(text: str, media: Optional[str]) -> str:
    """llava_v1 prompt: system, ' USER: ', `<video>\\n` (or `<image>\\n`) + text, ' ASSISTANT:'."""
    message = text if media is None else f"{PLACEHOLDER[media]}\n{text}"
    return f"{SYSTEM_LLAVA_V1} USER: {message} ASSISTANT:"


def load_frames(video, num_frames: int) -> list:
    """A video as `num_frames` RGB frames spread like Video-LLaVA's loader (linspace).

    video: a list of frames (PIL images or [H, W, 3] uint8 arrays), a [T, H, W, 3]
    uint8 array, a `.npy` file of one, or a folder of frame image files. Video
    files need a decoder that is not installed here: pre-extract the frames.
    """
    from PIL import Image
    from duet_jax.evaluation.media import _frame_files, frame_indices
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if os.path.isdir(path):
            files = _frame_files(path)
            if not files:
                raise ValueError(f"{path}: frame folder holds no image files")
            frames = [files[i] for i in frame_indices(len(files), num_frames)]
            out = []
            for f in frames:
                with Image.open(f) as img:
                    out.append(img.convert("RGB"))
            return out
        if path.endswith(".npy") and os.path.isfile(path):
            video = np.load(path)
        else:
            raise ValueError(f"{path}: pass a folder of frame images or a .npy [T, H, W, 3] uint8 "
                             "array; video files need PyAV/decord, which are not installed here")
    frames = list(video)
    if not frames:
        raise ValueError("a video needs at least one frame")
    return [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, np.uint8))
            for f in (frames[i] for i in frame_indices(len(frames), num_frames))]


@dataclasses.dataclass(frozen=True)
class VideoLlava(Handle):
    """The Video-LLaVA handle: images and 8-frame videos, each through its own tower."""
    config: VideoLlavaConfig
    module: VideoLlavaModel

    def reduction(self, reduction, media: str = "video"):
        """Resolves a preset name / config and checks it fits this model (per frame for video)."""
        from duet_jax.reduction import resolve_reduction
        red = resolve_reduction(reduction)
        if red is not None:
            red.validate(self.config.vision.num_patches, self.config.text.num_hidden_layers,
                         crops=self.config.num_frames if media == "video" else 1)
        return red

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

    def generate(self, prompts: Sequence[str], images: Optional[Sequence] = None,
                 videos: Optional[Sequence] = None, *, max_new_tokens: int = 128,
                 reduction=None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> list:
        """Decoded, stripped answers (special tokens skipped), one per prompt."""
        out = self.generate_batch(self.encode(prompts, images, videos),
                                  max_new_tokens=max_new_tokens, reduction=reduction,
                                  temperature=temperature, top_p=top_p, seed=seed)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        return [self.tokenizer.decode(t[:n], skip_special_tokens=True).strip()
                for t, n in zip(tokens, lengths)]


def is_video_checkpoint(path: str) -> bool:
    """Whether `path/config.json` describes a Video-LLaVA model (HF or converted dir)."""
    import json
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("model_type") == "video_llava"
    except (OSError, ValueError, AttributeError):
        return False    # load_params reports the problem with its own message


def load_video_llava(path: str, dtype=jnp.float32, compute_dtype=None, remat: bool = False,
                     mesh=None) -> VideoLlava:
    """Loads an HF Video-LLaVA dir or its `python -m convert` output."""
    from duet_jax.checkpoints import load_params
    from duet_jax.models.video_llava import unstack_video_params
    if mesh is not None:
        raise ValueError("mesh= is not supported for Video-LLaVA checkpoints yet; load on one "
                         "device (mesh=None)")
    cfg, params = load_params(path, dtype=dtype)
    module = VideoLlavaModel(cfg, dtype=compute_dtype or dtype, param_dtype=dtype, remat=remat)
    return VideoLlava(cfg, module, unstack_video_params(params), path)
