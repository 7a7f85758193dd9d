"""The LLaVA-1.5 handle (docs/API.md §3); `duet_jax.api.registry.load_llava` returns it for
HF / original / converted LLaVA directories."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.api.base import Handle
from duet_jax.api.clip_text import ClipTextTower, find_clip_text_tower, load_clip_text_tower
from duet_jax.dtypes import parse_dtype
from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import PARAM_AXES, LlavaModel, unstack_params
from duet_jax.reduction import ZOO_METHODS
from duet_jax.sharding import param_shardings


@functools.partial(jax.jit, static_argnames=("module", "reduction", "images_in_every_sample"))
def _logits(module, params, input_ids, pixel_values, attention_mask, reduction,
            images_in_every_sample, zoo_inputs=None):
    extra = {} if zoo_inputs is None else {"zoo_inputs": zoo_inputs}
    logits, seq = module.apply(params, input_ids, pixel_values, attention_mask,
                               reduction=reduction, images_in_every_sample=images_in_every_sample,
                               **extra)
    return logits, seq.valid


def checkpoint_config(path: str, vision_tower: Optional[str] = None):
    """The config of a checkpoint dir of any family (HF, original, converted), from its
    config and weight headers alone (a converted dir: its marker's family parses it)."""
    from duet_jax.checkpoints.load import (MARKER, checkpoint_kind, family_of_format,
                                           plan_conversion, read_json)
    if checkpoint_kind(path) != "converted":
        return plan_conversion(path, vision_tower).config
    config = read_json(os.path.join(path, "config.json"))
    return family_of_format(read_json(os.path.join(path, MARKER)).get("format")).config(config)


def load_shardings(module_class, axes: dict, path: str, vision_tower: Optional[str], mesh):
    """None without a mesh; else the `NamedSharding` tree the checkpoint's params load
    straight onto: `module_class`'s param shapes (from the config alone) placed by `axes`,
    its model's `PARAM_AXES` table."""
    if mesh is None:
        return None
    shapes = jax.eval_shape(module_class(checkpoint_config(path, vision_tower)).init,
                            jax.random.key(0))
    return param_shardings(shapes, mesh, axes)


def image_logits(module, params, input_ids, pixels, attention_mask, reduction, zoo_inputs=None):
    """[B, L', V] logits of a right-padded batch (`attention_mask` None: no padding)."""
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    every = bool(np.all(np.asarray(input_ids == module.config.image_token_index).any(1)))
    logits, _ = _logits(module, params, input_ids, pixels, jnp.asarray(attention_mask),
                        reduction, every, zoo_inputs)
    return logits


@dataclasses.dataclass(frozen=True)
class Llava(Handle):
    """The LLaVA-1.5 handle (pre-processing: vicuna_v1 prompts, square-padded CLIP images)."""
    config: LlavaConfig
    module: LlavaModel
    module_class = LlavaModel    # the pure module `load` builds (LLaVA-NeXT: LlavaNextModel)
    param_axes = PARAM_AXES      # its params' logical axes (duet_jax.sharding), from its model file
    zoo_methods = ZOO_METHODS    # every zoo preset llava15-* runs here (docs/BASELINES.md §9)
    clip_text: Optional[ClipTextTower] = None   # CDPruner's question tower (api.clip_text)

    @property
    def zoo_inputs(self) -> tuple:
        return ("clip_text_tower",) if self.clip_text is not None else ()

    @classmethod
    def load(cls, path: str, *, dtype: str = "float32", compute_dtype: Optional[str] = None,
             mesh=None, vision_tower: Optional[str] = None, remat: bool = False,
             clip_text_tower: Optional[str] = None):
        """An HF LLaVA dir (llava-hf or legacy layout), an original LLaVA dir
        (`vision_tower=` its CLIP dir) or a `python -m convert` output.
        `clip_text_tower`: an HF CLIPModel dir for CDPruner (default: `path/clip_text_tower`
        where that holds one; docs/BASELINES.md §9)."""
        from duet_jax.checkpoints import load_params
        pdt = parse_dtype(dtype)
        shardings = load_shardings(cls.module_class, cls.param_axes, path, vision_tower, mesh)
        cfg, params = load_params(path, dtype=pdt, shardings=shardings, vision_tower=vision_tower)
        module = cls.module_class(cfg, dtype=parse_dtype(compute_dtype) or pdt, param_dtype=pdt,
                                  remat=remat)
        # donate: the stacked copy is freed leaf by leaf, so loading peaks at one
        # leaf above the model size, not at twice the layer weights
        params = unstack_params(params, donate=True)
        clip_dir = (find_clip_text_tower(path, clip_text_tower) if "cdpruner" in cls.zoo_methods
                    else None)
        if clip_dir is None:
            return cls(cfg, module, params, path)
        clip, projection = load_clip_text_tower(clip_dir, cfg.vision.hidden_size, mesh)
        return cls(cfg, module, {**params, "clip_projection": projection}, path, clip)

    def zoo_batch(self, batch: dict, red) -> Optional[dict]:
        """What `red`'s zoo method reads per sample: CDPruner's question embeddings."""
        if red is None or red.select is None or red.select.method != "cdpruner":
            return None
        return self.clip_text.zoo_inputs(batch)

    def check_reduction(self, red, media: str = "image") -> None:
        red.validate(self.config.vision.num_patches, self.config.text.num_hidden_layers,
                     inputs=self.zoo_inputs)

    def logits(self, input_ids, pixel_values, attention_mask=None, reduction=None,
               questions: Optional[Sequence[str]] = None):
        """[B, L', V] float32; rows past each sample's (reduced) length are padding.
        `questions` (one user message per row): what CDPruner embeds; only it reads them."""
        input_ids = jnp.asarray(input_ids)
        self.module.check_inputs(input_ids, pixel_values)
        self.check_pixels_used(input_ids, pixel_values, self.config.image_token_index)
        red = self.reduction(reduction)
        zoo = None
        if red is not None and red.select is not None and red.select.method == "cdpruner":
            if questions is None or len(questions) != input_ids.shape[0]:
                raise ValueError(f"{red.name}: cdpruner embeds each sample's question; pass "
                                 "questions= (one user message per row) or use encode + "
                                 "generate_batch")
            zoo = self.zoo_batch(self.clip_text.segments(questions), red)
        return image_logits(self.module, self.params, input_ids, jnp.asarray(pixel_values),
                            attention_mask, red, zoo)

    def encode(self, prompts: Sequence[str], images: Optional[Sequence] = None,
               videos: Optional[Sequence] = None) -> dict:
        """User messages + images (paths, PIL images or None) -> a right-padded batch.

        A message is wrapped in the vicuna_v1 template with `<image>\\n` in front
        (docs/EVAL.md §0) unless it already is a full prompt ending in `ASSISTANT:`.
        """
        from duet_jax.data.conversation import build_eval_prompt
        from duet_jax.data.images import preprocess_image
        from duet_jax.data.tokenize import right_pad, tokenize_prompt
        images = self.images_only(prompts, images, videos)
        from duet_jax.data.salient import salient_token_mask
        cfg, size = self.config, self.config.vision.image_size
        ids, pixels, fulls = [], [], []
        for text, image in zip(prompts, images):
            full = text if text.rstrip().endswith("ASSISTANT:") else build_eval_prompt(
                text, has_image=image is not None)
            fulls.append(full)
            ids.append(tokenize_prompt(full, self.tokenizer, image_token_index=cfg.image_token_index,
                                       image_seq_length=cfg.image_seq_length))
            pixels.append(np.zeros((3, size, size), np.float32) if image is None
                          else preprocess_image(image, self.image_processor))
        length = max(len(i) for i in ids)
        input_ids, mask = right_pad(ids, length, self.tokenizer.pad_token_id or 0)
        salient = np.zeros_like(mask, bool)
        for b, (text, full, row) in enumerate(zip(prompts, fulls, ids)):
            after = full.split("<image>", 1)[1] if "<image>" in full else ""
            question = text.replace("<image>\n", "")
            if question not in after:     # a caller-built full prompt: no question to locate
                continue
            offset = int(np.argmax(row == cfg.image_token_index)) + cfg.image_seq_length
            salient[b] = salient_token_mask(after, question, self.tokenizer, offset, length)
        out = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": np.stack(pixels),
               "has_image": np.array([im is not None for im in images]), "salient_mask": salient}
        if self.clip_text is not None:      # CDPruner's question segments (api.clip_text)
            out.update(self.clip_text.segments(prompts))
        return out

    def generate_batch(self, batch: dict, *, max_new_tokens: int = 128, reduction=None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        """Token-level generation on an encoded batch -> `Generated` (tokens, lengths, forward)."""
        red = self.reduction(reduction)
        return self._generate(self.module, self.params, batch, batch["pixel_values"], red,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed, zoo_inputs=self.zoo_batch(batch, red))
