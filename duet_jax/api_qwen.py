"""The Qwen2.5-VL model handle: `duet_jax.load_qwen25vl(path)`.

Pre-processing goes through transformers' own classes: the tokenizer's chat
template (Qwen's `<|im_start|>` format with `<|vision_start|><|image_pad|><|vision_end|>`)
and `Qwen2VLImageProcessorPil` (`return_tensors="np"`). `Qwen2_5_VLProcessor` itself
cannot be built without the torchvision video processor, so its one job on top of
these, expanding each `<|image_pad|>` to `t*h*w / merge^2` copies, is done here.
Reduction runs on batches whose samples hold one image each, all of one grid
(the official code: batch 1, ALGORITHM.md §2.6); `generate` batches the prompts
of one resolution bucket.

Static shapes: `encode` snaps each image to a resolution bucket
(`duet_jax.data.resolution_buckets`, `bucket=False` keeps HF's exact grid) and
`generate_ids` right-pads the prompt to a multiple of `length_bucket`, so a
benchmark compiles once per (bucket, prompt-length bucket), not once per image.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.api import Handle
from duet_jax.models.qwen25vl import Qwen25VLConfig, Qwen25VLModel, rope_index
from duet_jax.reduction import ReductionConfig, resolve_reduction

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _grids(image_grid_thw) -> tuple:
    return tuple(tuple(int(v) for v in g) for g in np.asarray(image_grid_thw).reshape(-1, 3))


@dataclasses.dataclass(frozen=True)
class Qwen25VL(Handle):
    """The Qwen2.5-VL handle (Qwen's chat template and its own image processor)."""
    config: Qwen25VLConfig
    module: Qwen25VLModel

    def reduction(self, reduction: Union[None, str, ReductionConfig]) -> Optional[ReductionConfig]:
        red = resolve_reduction(reduction)
        if red is not None and red.stage1 is not None and red.stage1.cls_token:
            raise ValueError(f"{red.name}: Qwen2.5-VL has no CLS token; use a qwen25vl-duet-* "
                             "preset or Stage1Config(cls_token=False)")
        layers = self.config.text.num_hidden_layers
        if red is not None and red.stage2 is not None:
            bad = [l for l in red.stage2.layers if not 1 <= l <= layers - 1]
            if bad:
                raise ValueError(f"{red.name}: stage2 layers {bad} outside [1, {layers - 1}] for "
                                 f"a {layers}-layer LM")
        return red

    def logits(self, input_ids, pixel_values, image_grid_thw, attention_mask=None, reduction=None):
        """[B, L', V] float32 (L' = reduced length; a reduced batch holds one image per
        sample, all of one grid)."""
        from duet_jax.models.qwen25vl_reduced import reduced_logits
        ids = np.asarray(input_ids)
        pos, _ = rope_index(self.config, ids, image_grid_thw, attention_mask)
        mask = None if attention_mask is None else jnp.asarray(attention_mask)
        logits, _ = reduced_logits(self.module, self.params, jnp.asarray(ids),
                                   None if pixel_values is None else jnp.asarray(pixel_values),
                                   _grids(image_grid_thw), jnp.asarray(pos), mask,
                                   self.reduction(reduction))
        return logits

    @functools.cached_property
    def image_processor(self):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        return Qwen2VLImageProcessorPil.from_pretrained(self.path, local_files_only=True)

    def bucket_size(self, height: int, width: int) -> tuple:
        """(height, width) in pixels that `encode` resizes a `height x width` image to."""
        from duet_jax.data.resolution_buckets import qwen_bucket_size
        proc = self.image_processor
        return qwen_bucket_size(height, width, patch=proc.patch_size, merge=proc.merge_size,
                                min_pixels=proc.size.shortest_edge,
                                max_pixels=proc.size.longest_edge)

    def encode(self, prompt: str, image=None, *, bucket: bool = True) -> dict:
        """One user message (+ optional image: path or PIL) -> input_ids [1, L],
        pixel_values [N, patch_dim] or None, image_grid_thw [n, 3]. `bucket`: snap
        the image to its resolution bucket first (bounded compiles); False keeps
        HF's exact `smart_resize` grid."""
        from PIL import Image
        from duet_jax.data.resolution_buckets import resize
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                  tokenize=False, add_generation_prompt=True)
        pixels, grid = None, np.zeros((0, 3), np.int64)
        if image is not None:
            image = Image.open(image).convert("RGB") if isinstance(image, str) else image
            if bucket:
                image = resize(image, self.bucket_size(image.height, image.width))
            out = self.image_processor(images=[image], return_tensors="np")
            pixels, grid = out["pixel_values"], out["image_grid_thw"]
            pad = "<|image_pad|>"
            if text.count(pad) != 1:
                raise ValueError(f"the chat template produced {text.count(pad)} {pad} tokens for "
                                 "one image; check the tokenizer's chat_template")
            n = int(np.prod(grid[0])) // self.config.vision.merge_unit
            text = text.replace(pad, pad * n)
        ids = np.asarray([self.tokenizer(text, add_special_tokens=False)["input_ids"]], np.int64)
        return {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": grid}

    def generate_ids(self, input_ids, pixel_values, image_grid_thw, attention_mask=None, *,
                     max_new_tokens: int = 128, reduction=None, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int = 0, length_bucket: int = 64):
        """Token-level generation -> (tokens [B, T], lengths [B], EOS included). Prompts are
        right-padded to a multiple of `length_bucket` (1: no padding)."""
        from duet_jax.data.resolution_buckets import pad_length
        from duet_jax.generation.decode import generate_qwen
        ids = np.asarray(input_ids)
        mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask, bool)
        extra = pad_length(ids.shape[1], length_bucket) - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, extra)))
        mask = np.pad(mask, ((0, 0), (0, extra)))
        pos, nxt = rope_index(self.config, ids, image_grid_thw, mask)
        eos = self.config.text.eos_token_id
        out = generate_qwen(self.module, self.params, jnp.asarray(ids),
                            None if pixel_values is None else jnp.asarray(pixel_values),
                            _grids(image_grid_thw), jnp.asarray(pos), jnp.asarray(nxt),
                            jnp.asarray(mask), reduction=self.reduction(reduction), max_new_tokens=max_new_tokens,
                            eos_id=-1 if eos is None else eos, temperature=temperature,
                            top_p=top_p, rng=jax.random.key(seed))
        return np.asarray(out.tokens), np.asarray(out.lengths)

    def generate(self, prompts: Sequence[str], images: Sequence, *, max_new_tokens: int = 128,
                 reduction=None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, bucket: bool = True, length_bucket: int = 64,
                 batch_size: int = 8) -> list:
        """Decoded, stripped answers, one per prompt. Prompts whose images share a grid
        (with `bucket`, one resolution bucket) run together, `batch_size` at a time."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images; pass one image "
                             "(or None) per prompt")
        encoded = [self.encode(p, im, bucket=bucket) for p, im in zip(prompts, images)]
        groups: dict = {}
        for i, enc in enumerate(encoded):
            groups.setdefault(_grids(enc["image_grid_thw"]), []).append(i)
        answers = [""] * len(prompts)
        for idxs in groups.values():
            for k in range(0, len(idxs), batch_size):
                chunk = idxs[k:k + batch_size]
                tokens, lengths = self.generate_ids(
                    **collate([encoded[i] for i in chunk]), max_new_tokens=max_new_tokens,
                    reduction=reduction, temperature=temperature, top_p=top_p, seed=seed,
                    length_bucket=length_bucket)
                for row, i in enumerate(chunk):
                    answers[i] = self.tokenizer.decode(tokens[row, :lengths[row]],
                                                       skip_special_tokens=True).strip()
        return answers


def collate(samples: Sequence[dict]) -> dict:
    """`encode` outputs -> one right-padded batch (input_ids, attention_mask, pixel_values
    of every image in prompt order, image_grid_thw)."""
    from duet_jax.data.tokenize import right_pad
    ids = [s["input_ids"][0] for s in samples]
    input_ids, mask = right_pad(ids, max(len(i) for i in ids), 0)
    pixels = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
    return {"input_ids": input_ids, "attention_mask": mask,
            "pixel_values": np.concatenate(pixels) if pixels else None,
            "image_grid_thw": np.concatenate([s["image_grid_thw"] for s in samples])}


def is_qwen25vl(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return json.load(f).get("model_type") == "qwen2_5_vl"


def load_qwen25vl(path: str, dtype: str = "float32", *, compute_dtype: Optional[str] = None) -> Qwen25VL:
    """Loads an HF Qwen2.5-VL directory (hub or transformers-5 key names)."""
    from duet_jax.checkpoints.qwen25vl import load_qwen_params
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory; pass a Qwen2.5-VL checkpoint directory")
    if dtype not in _DTYPES or (compute_dtype is not None and compute_dtype not in _DTYPES):
        raise ValueError(f"dtype {dtype!r}/{compute_dtype!r} is not supported; use one of {sorted(_DTYPES)}")
    pdt = _DTYPES[dtype]
    cfg, params = load_qwen_params(path)
    params = jax.tree.map(lambda a: jnp.asarray(a, pdt), params)
    module = Qwen25VLModel(cfg, dtype=_DTYPES[compute_dtype or dtype])
    return Qwen25VL(cfg, module, params, path)
