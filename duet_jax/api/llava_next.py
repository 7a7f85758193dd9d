"""`duet_jax.load_llava(path)` for LLaVA-NeXT checkpoints: the same `.logits / .generate`
handle as LLaVA-1.5 (`duet_jax.api.Llava`), with AnyRes pre-processing through
transformers' `LlavaNextImageProcessorPil` (no square padding: the processor tiles the
image itself) and one image-token block per image whose length is HF's count.

Static shapes: the block layout depends on each image's size, so `encode` first
snaps every image to a canonical size of its AnyRes pinpoint
(`duet_jax.data.resolution_buckets`; `bucket=False` keeps the exact size), and
`eval.py run` batches images of one canonical size together (`shape_key`): a
benchmark compiles at most once per canonical size, not once per image."""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from duet_jax.api.llava import Llava, _logits
from duet_jax.models import anyres
from duet_jax.models.llava_next import PARAM_AXES, LlavaNextModel, NextImages
from duet_jax.models.zoo import BLOCK_METHODS


def as_images(pixel_values, image_sizes=None) -> NextImages:
    """NextImages from the processor's (pixel_values [B, P, 3, S, S], image_sizes [B, 2])."""
    if isinstance(pixel_values, NextImages):
        return pixel_values
    if image_sizes is None:
        raise ValueError("LLaVA-NeXT needs image_sizes [B, 2] (the processor returns them) "
                         "next to pixel_values [B, P, 3, S, S]")
    if np.ndim(pixel_values) != 5:
        raise ValueError(f"pixel_values has shape {np.shape(pixel_values)}; LLaVA-NeXT takes "
                         "[B, crops, 3, S, S] from LlavaNextImageProcessor")
    return NextImages(jnp.asarray(pixel_values), np.asarray(image_sizes))


@dataclasses.dataclass(frozen=True)
class LlavaNext(Llava):
    """LLaVA-NeXT handle; `pixel_values` may be `NextImages` or come with `image_sizes=`."""
    module_class = LlavaNextModel
    param_axes = PARAM_AXES
    # DART in the LM, DivPrune / random over the whole image block (docs/BASELINES.md §9)
    zoo_methods = ("dart", *BLOCK_METHODS)

    @property
    def max_crops(self) -> int:
        """Crops of the largest AnyRes grid: the base crop plus its tiles."""
        side = self.config.vision.image_size
        return 1 + max((h // side) * (w // side) for h, w in self.config.image_grid_pinpoints)

    def check_reduction(self, red, media: str = "image") -> None:
        """A block's n_0 depends on the image, so a Stage-2 keep is checked against the
        largest grid here and against each batch's blocks when it runs."""
        red.validate(self.config.vision.num_patches, self.config.text.num_hidden_layers,
                     crops=self.max_crops, inputs=self.zoo_inputs)

    def logits(self, input_ids, pixel_values, attention_mask=None, reduction=None,
               image_sizes=None):
        """[B, L', V] float32; rows past each sample's (reduced) length are padding."""
        input_ids = jnp.asarray(input_ids)
        images = as_images(pixel_values, image_sizes)
        self.module.check_inputs(input_ids, images)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        logits, _ = _logits(self.module, self.params, input_ids, images,
                            jnp.asarray(attention_mask), self.reduction(reduction), True)
        return logits

    @functools.cached_property
    def image_processor(self):
        from transformers import LlavaNextImageProcessorPil
        return LlavaNextImageProcessorPil.from_pretrained(self.path, local_files_only=True)

    def bucket_size(self, height: int, width: int) -> tuple:
        """(height, width) that `encode` resizes a `height x width` image to."""
        from duet_jax.data.resolution_buckets import next_bucket_size
        return next_bucket_size(height, width, self.config.image_grid_pinpoints)

    def shape_key(self, image_path: str) -> tuple:
        """The compile-relevant shape of an image file (its canonical size), from its header."""
        from PIL import Image
        with Image.open(image_path) as img:
            return self.bucket_size(img.height, img.width)

    def full_prompt(self, text: str) -> str:
        """A message in the family's template (vicuna_v1), or a full prompt as it is."""
        from duet_jax.data.conversation import build_eval_prompt
        return text if text.rstrip().endswith("ASSISTANT:") else build_eval_prompt(text)

    def block_size(self, size_hw) -> int:
        """Image-token ids of one image of (original) size (H, W): HF's processor count."""
        return anyres.num_image_tokens(self.config, size_hw)

    def encode(self, prompts: Sequence[str], images: Optional[Sequence] = None,
               videos: Optional[Sequence] = None, *, bucket: bool = True) -> dict:
        """Messages + images (paths or PIL images; one per prompt) -> a right-padded batch.

        The family's template (`full_prompt`), tokenized as `LlavaNextProcessor` does:
        the whole prompt in one tokenizer call (not chunk-wise around `<image>`), then
        the `<image>` id expanded to HF's per-image count (`block_size`)."""
        from duet_jax.data.images import load_image
        from duet_jax.data.salient import salient_token_mask
        from duet_jax.data.tokenize import expand_image_placeholders, right_pad
        images = self.images_only(prompts, images, videos)
        if any(im is None for im in images):
            raise ValueError("LLaVA-NeXT batches need exactly one image per prompt")
        from duet_jax.data.resolution_buckets import resize
        pil = [load_image(im) if isinstance(im, str) else im.convert("RGB") for im in images]
        if bucket:
            pil = [resize(im, self.bucket_size(im.height, im.width)) for im in pil]
        enc = self.image_processor(images=pil, return_tensors="np")
        sizes = np.asarray(enc["image_sizes"])
        cfg, ids, fulls = self.config, [], []
        for text, size in zip(prompts, sizes):
            full = self.full_prompt(text)
            fulls.append(full)
            whole = np.asarray(self.tokenizer(full)["input_ids"])
            if (whole == cfg.image_token_index).sum() != 1:
                raise ValueError(f"prompt {full[:40]!r}... must hold exactly one <image>")
            ids.append(expand_image_placeholders(
                whole, None, image_token_index=cfg.image_token_index, placeholder=cfg.image_token_index,
                image_seq_length=self.block_size(size))[0])
        length = max(len(i) for i in ids)
        input_ids, mask = right_pad(ids, length, self.tokenizer.pad_token_id or 0)
        salient = np.zeros_like(mask, bool)
        for b, (text, full, row, size) in enumerate(zip(prompts, fulls, ids, sizes)):
            after, question = full.split("<image>", 1)[-1], text.replace("<image>\n", "")
            if "<image>" in full and question in after:
                offset = int(np.argmax(row == cfg.image_token_index)) + self.block_size(size)
                salient[b] = salient_token_mask(after, question, self.tokenizer, offset, length)
        return {"input_ids": input_ids, "attention_mask": mask,
                "pixel_values": NextImages(np.asarray(enc["pixel_values"], np.float32), sizes),
                "has_image": np.ones(len(prompts), bool), "salient_mask": salient}
