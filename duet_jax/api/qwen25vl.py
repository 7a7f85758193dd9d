"""The Qwen2.5-VL handle: `duet_jax.load_llava(path)` (or `load_qwen25vl`) on a Qwen2.5-VL dir.

Pre-processing goes through transformers' own classes: the tokenizer's chat
template (Qwen's `<|im_start|>` format with `<|vision_start|><|image_pad|><|vision_end|>`)
and `Qwen2VLImageProcessorPil` (`return_tensors="np"`). `Qwen2_5_VLProcessor` itself
cannot be built without the torchvision video processor, so its one job on top of
these, expanding each `<|image_pad|>` to `t*h*w / merge^2` copies, is done here.
Reduction runs on batches whose samples hold one image each, all of one grid
(the official code: batch 1, docs/ALGORITHM.md §2.6); `generate` batches the prompts
of one resolution bucket.

Static shapes: `encode` snaps each image to a resolution bucket
(`duet_jax.data.resolution_buckets`, `bucket=False` keeps HF's exact grid) and
`generate` right-pads each batch to a multiple of `length_bucket` tokens (`pad_length`), so a
benchmark compiles once per (bucket, prompt-length bucket), not once per image.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.api.base import Handle, check_directory
from duet_jax.dtypes import parse_dtype
from duet_jax.models.qwen25vl import PARAM_AXES, Qwen25VLConfig, Qwen25VLModel, rope_index
from duet_jax.models.zoo import BLOCK_METHODS
from duet_jax.sharding import param_shardings


def _grids(image_grid_thw) -> tuple:
    return tuple(tuple(int(v) for v in g) for g in np.asarray(image_grid_thw).reshape(-1, 3))


@dataclasses.dataclass(frozen=True)
class Qwen25VL(Handle):
    """The Qwen2.5-VL handle (Qwen's chat template and its own image processor)."""
    config: Qwen25VLConfig
    module: Qwen25VLModel
    kept_pictures = False        # kept-token pictures draw CLIP patch grids (LLaVA families)
    # DART in the LM, DivPrune / random over each image's merged tokens (docs/BASELINES.md §9)
    zoo_methods = ("dart", *BLOCK_METHODS)

    @classmethod
    def load(cls, path: str, *, dtype: str = "float32", compute_dtype: Optional[str] = None,
             mesh=None, vision_tower: Optional[str] = None, remat: bool = False):
        """An HF Qwen2.5-VL directory (hub or transformers-5 key names) or its conversion."""
        from duet_jax.checkpoints.qwen25vl import load_qwen_params
        if vision_tower is not None or remat:
            raise ValueError("vision_tower= and remat= are LLaVA options; a Qwen2.5-VL checkpoint "
                             "holds its own vision tower and runs inference only")
        pdt = parse_dtype(dtype)
        cdt = parse_dtype(compute_dtype, "compute_dtype") or pdt
        cfg, params = load_qwen_params(path)      # host (NumPy) arrays
        if mesh is None:
            params = jax.tree.map(lambda a: jnp.asarray(a, pdt), params)
        else:   # each leaf goes from the host straight onto its devices, then is cast there
            params = jax.tree.map(lambda a, s: jax.device_put(a, s).astype(pdt), params,
                                  param_shardings(params, mesh, PARAM_AXES))
        return cls(cfg, Qwen25VLModel(cfg, dtype=cdt), params, path)

    def check_reduction(self, red, media: str = "image") -> None:
        if red.stage1 is not None and red.stage1.cls_token:
            raise ValueError(f"{red.name}: Qwen2.5-VL has no CLS token; use a qwen25vl-duet-* "
                             "preset or Stage1Config(cls_token=False)")
        layers = self.config.text.num_hidden_layers
        if red.stage2 is not None:
            bad = [l for l in red.stage2.layers if not 1 <= l <= layers - 1]
            if bad:
                raise ValueError(f"{red.name}: stage2 layers {bad} outside [1, {layers - 1}] for "
                                 f"a {layers}-layer LM")

    def logits(self, input_ids, pixel_values=None, attention_mask=None, reduction=None, *,
               image_grid_thw=None):
        """[B, L', V] float32 (L' = reduced length; a reduced batch holds one image per
        sample, all of one grid). `image_grid_thw` [n, 3] comes with `pixel_values`."""
        from duet_jax.models.qwen25vl_reduced import reduced_logits
        if pixel_values is not None and image_grid_thw is None:
            raise ValueError("Qwen2.5-VL pixel_values need image_grid_thw= (the processor "
                             "returns it next to them)")
        grid = np.zeros((0, 3), np.int64) if image_grid_thw is None else image_grid_thw
        ids = np.asarray(input_ids)
        if pixel_values is not None and np.size(pixel_values) \
                and not np.any(ids == self.config.image_token_id):
            raise ValueError(f"pixel_values given but input_ids hold no image tokens (id "
                             f"{self.config.image_token_id}), so the image would be ignored; "
                             "build the prompt with model.encode (its chat template places them)")
        pos, _ = rope_index(self.config, ids, grid, attention_mask)
        mask = None if attention_mask is None else jnp.asarray(attention_mask)
        logits, _ = reduced_logits(self.module, self.params, jnp.asarray(ids),
                                   None if pixel_values is None else jnp.asarray(pixel_values),
                                   _grids(grid), jnp.asarray(pos), mask,
                                   self.batch_reduction(reduction, len(ids), _grids(grid)))
        return logits

    def batch_reduction(self, reduction, batch: int, grids: tuple):
        """`reduction` resolved and checked against this batch's images (their token counts
        are known only here), in one line before anything is traced."""
        from duet_jax.models.qwen25vl_reduced import check_reduction
        red = self.reduction(reduction)
        check_reduction(self.config, red, batch, grids)
        return red

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

    def shape_key(self, image_path: str) -> tuple:
        """The resolution bucket of an image file, from its header."""
        from PIL import Image
        with Image.open(image_path) as img:
            return self.bucket_size(img.height, img.width)

    def encode_one(self, prompt: str, image=None, *, bucket: bool = True) -> dict:
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

    def encode(self, prompts: Sequence[str], images: Optional[Sequence] = None,
               videos: Optional[Sequence] = None, *, bucket: bool = True) -> dict:
        """User messages + images (paths, PIL images or None) -> one right-padded batch:
        input_ids, attention_mask, has_image, pixel_values (every image's patches in
        prompt order, or None) and image_grid_thw [n, 3]."""
        images = self.images_only(prompts, images, videos)
        batch = collate([self.encode_one(p, im, bucket=bucket) for p, im in zip(prompts, images)],
                        self.pad_id)
        return {**batch, "has_image": np.array([im is not None for im in images])}

    def generate_batch(self, batch: dict, *, max_new_tokens: int = 128, reduction=None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        """Token-level generation on an encoded batch -> Generated (tokens [B, T], lengths [B])."""
        from duet_jax.generation.decode import generate_qwen
        self.check_generation(max_new_tokens, temperature, top_p)
        ids = np.asarray(batch["input_ids"])
        mask = np.asarray(batch.get("attention_mask", np.ones(ids.shape, bool)), bool)
        grid = batch["image_grid_thw"]
        pos, nxt = rope_index(self.config, ids, grid, mask)
        eos = self.config.text.eos_token_id
        pixels = batch.get("pixel_values")
        return generate_qwen(self.module, self.params, jnp.asarray(ids),
                             None if pixels is None else jnp.asarray(pixels), _grids(grid),
                             jnp.asarray(pos), jnp.asarray(nxt), jnp.asarray(mask),
                             reduction=self.batch_reduction(reduction, len(ids), _grids(grid)),
                             max_new_tokens=max_new_tokens,
                             eos_id=-1 if eos is None else eos, pad_id=self.pad_id,
                             temperature=temperature, top_p=top_p, rng=jax.random.key(seed))

    def generate(self, prompts: Sequence[str], images: Optional[Sequence] = None,
                 videos: Optional[Sequence] = None, *, max_new_tokens: int = 128,
                 reduction=None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, bucket: bool = True, length_bucket: int = 64,
                 batch_size: int = 8) -> list:
        """Decoded, stripped answers, one per prompt. Prompts whose images share a grid
        (with `bucket`, one resolution bucket) run together, `batch_size` at a time, each
        batch right-padded to a multiple of `length_bucket` tokens."""
        self.check_generation(max_new_tokens, temperature, top_p)
        images = self.images_only(prompts, images, videos)
        encoded = [self.encode_one(p, im, bucket=bucket) for p, im in zip(prompts, images)]
        groups: dict = {}
        for i, enc in enumerate(encoded):
            groups.setdefault(_grids(enc["image_grid_thw"]), []).append(i)
        answers = [""] * len(prompts)
        for idxs in groups.values():
            for k in range(0, len(idxs), batch_size):
                chunk = idxs[k:k + batch_size]
                batch = self.pad_length(collate([encoded[i] for i in chunk], self.pad_id),
                                        length_bucket)
                out = self.generate_batch(batch, max_new_tokens=max_new_tokens,
                                          reduction=reduction, temperature=temperature,
                                          top_p=top_p, seed=seed)
                for i, answer in zip(chunk, self.decode_answers(out)):
                    answers[i] = answer
        return answers


def collate(samples: Sequence[dict], pad_id: int = 0) -> dict:
    """`encode_one` outputs -> one right-padded batch (input_ids, attention_mask, pixel_values
    of every image in prompt order, image_grid_thw)."""
    from duet_jax.data.tokenize import right_pad
    ids = [s["input_ids"][0] for s in samples]
    input_ids, mask = right_pad(ids, max(len(i) for i in ids), pad_id)
    pixels = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
    return {"input_ids": input_ids.astype(np.int64), "attention_mask": mask,
            "pixel_values": np.concatenate(pixels) if pixels else None,
            "image_grid_thw": np.concatenate([s["image_grid_thw"] for s in samples])}


def load_qwen25vl(path: str, dtype: str = "float32", *, compute_dtype: Optional[str] = None,
                  mesh=None) -> Qwen25VL:
    """Loads an HF Qwen2.5-VL directory; `duet_jax.load_llava` does the same."""
    check_directory(path)
    return Qwen25VL.load(path, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)
