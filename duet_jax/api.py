"""The public model handle: `duet_jax.load_llava(path)` (docs/API.md §3)."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel, unstack_params
from duet_jax.reduction import ReductionConfig, resolve_reduction

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(name):
    if name is None or not isinstance(name, str):
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


@functools.partial(jax.jit, static_argnames=("module", "reduction", "images_in_every_sample"))
def _logits(module, params, input_ids, pixel_values, attention_mask, reduction,
            images_in_every_sample):
    logits, seq = module.apply(params, input_ids, pixel_values, attention_mask,
                               reduction=reduction, images_in_every_sample=images_in_every_sample)
    return logits, seq.valid


def image_logits(module, params, input_ids, pixels, attention_mask, reduction):
    """[B, L', V] logits of a right-padded batch (`attention_mask` None: no padding)."""
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    every = bool(np.all(np.asarray(input_ids == module.config.image_token_index).any(1)))
    logits, _ = _logits(module, params, input_ids, pixels, jnp.asarray(attention_mask),
                        reduction, every)
    return logits


@dataclasses.dataclass(frozen=True)
class Handle:
    """What every model handle is: a thin, frozen container of config + pure module +
    params, and the directory its tokenizer and image processor load from."""
    config: Any
    module: Any
    params: Any
    path: Optional[str] = None

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer
        if self.path is None:
            raise ValueError("this model was not loaded from a directory; pass a tokenizer")
        return AutoTokenizer.from_pretrained(self.path, local_files_only=True)

    @functools.cached_property
    def image_processor(self):
        from duet_jax.data.images import load_image_processor
        return load_image_processor(self.path, image_size=self.config.vision.image_size)

    def _generate(self, module, params, batch: dict, pixels, red, *, max_new_tokens: int,
                  temperature: float, top_p: float, seed: int, media: str = "an image"):
        """`generate_tokens` on an encoded batch; Stage 2 needs `media` in every sample."""
        from duet_jax.generation.decode import generate_tokens
        every = bool(np.all(batch["has_image"]))
        if red is not None and not every and red.stage2 is not None:
            raise ValueError(f"Stage-2 generation needs {media} in every sample of the batch; "
                             "batch text-only prompts separately")
        eos = self.config.text.eos_token_id
        return generate_tokens(module, params, jnp.asarray(batch["input_ids"]),
                               jax.tree.map(jnp.asarray, pixels),
                               jnp.asarray(batch["attention_mask"]), reduction=red,
                               max_new_tokens=max_new_tokens, eos_id=-1 if eos is None else eos,
                               pad_id=self.tokenizer.pad_token_id or 0, temperature=temperature,
                               top_p=top_p, rng=jax.random.key(seed),
                               salient_mask=jnp.asarray(batch["salient_mask"])
                               if "salient_mask" in batch else None,
                               images_in_every_sample=every)


@dataclasses.dataclass(frozen=True)
class Llava(Handle):
    """The LLaVA-1.5 handle (pre-processing: vicuna_v1 prompts, square-padded CLIP images)."""
    config: LlavaConfig
    module: LlavaModel

    def reduction(self, reduction: Union[None, str, ReductionConfig]) -> Optional[ReductionConfig]:
        """Resolves a preset name / config and checks it fits this model."""
        red = resolve_reduction(reduction)
        if red is not None:
            red.validate(self.config.vision.num_patches, self.config.text.num_hidden_layers)
        return red

    def logits(self, input_ids, pixel_values, attention_mask=None, reduction=None):
        """[B, L', V] float32; rows past each sample's (reduced) length are padding."""
        input_ids = jnp.asarray(input_ids)
        self.module.check_inputs(input_ids, pixel_values)
        return image_logits(self.module, self.params, input_ids, jnp.asarray(pixel_values),
                            attention_mask, self.reduction(reduction))

    def encode(self, prompts: Sequence[str], images: Sequence) -> dict:
        """User messages + images (paths, PIL images or None) -> a right-padded batch.

        A message is wrapped in the vicuna_v1 template with `<image>\\n` in front
        (docs/EVAL.md §0) unless it already is a full prompt ending in `ASSISTANT:`.
        """
        from duet_jax.data.conversation import build_eval_prompt
        from duet_jax.data.images import preprocess_image
        from duet_jax.data.tokenize import right_pad, tokenize_prompt
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images; pass one image "
                             "(or None) per prompt")
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
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": np.stack(pixels),
                "has_image": np.array([im is not None for im in images]), "salient_mask": salient}

    def generate_batch(self, batch: dict, *, max_new_tokens: int = 128, reduction=None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        """Token-level generation on an encoded batch -> `Generated` (tokens, lengths, forward)."""
        return self._generate(self.module, self.params, batch, batch["pixel_values"],
                              self.reduction(reduction), max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, seed=seed)

    def generate(self, prompts: Sequence[str], images: Sequence, *, max_new_tokens: int = 128,
                 reduction=None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> list:
        """Decoded, stripped answers (special tokens skipped), one per prompt."""
        out = self.generate_batch(self.encode(prompts, images), max_new_tokens=max_new_tokens,
                                  reduction=reduction, temperature=temperature, top_p=top_p,
                                  seed=seed)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        return [self.tokenizer.decode(t[:n], skip_special_tokens=True).strip()
                for t, n in zip(tokens, lengths)]


def load_llava(path: str, dtype: str = "float32", *, compute_dtype: Optional[str] = None,
               mesh=None, vision_tower: Optional[str] = None, remat: bool = False) -> Llava:
    """Loads an HF LLaVA dir (llava-hf or legacy layout), an original LLaVA dir
    (`vision_tower=` its CLIP dir) or a `python -m convert` output; an HF
    Video-LLaVA dir (or its conversion) gives a `duet_jax.api_video.VideoLlava`.

    dtype: params dtype; compute_dtype defaults to it. mesh: a
    `jax.sharding.Mesh` to load the params straight onto (see duet_jax.sharding).
    """
    from duet_jax.checkpoints import load_params
    from duet_jax.api_qwen import is_qwen25vl, load_qwen25vl
    if os.path.isdir(path) and is_qwen25vl(path):   # Qwen2.5-VL family: its own container
        return load_qwen25vl(path, dtype, compute_dtype=compute_dtype)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory; pass a LLaVA checkpoint directory")
    pdt = _dtype(dtype)
    from duet_jax.api_video import is_video_checkpoint, load_video_llava
    if is_video_checkpoint(path):    # model_type video_llava: a VideoLlava handle
        return load_video_llava(path, pdt, _dtype(compute_dtype), remat=remat, mesh=mesh)
    shardings = None
    if mesh is not None:
        from duet_jax.sharding import param_shardings
        shardings = param_shardings(_param_shapes(path, vision_tower), mesh)
    cfg, params = load_params(path, dtype=pdt, shardings=shardings, vision_tower=vision_tower)
    module = _module_class(cfg)(cfg, dtype=_dtype(compute_dtype) or pdt, param_dtype=pdt,
                                remat=remat)
    # donate: the stacked copy is freed leaf by leaf, so loading peaks at one
    # leaf above the model size, not at twice the layer weights
    params = unstack_params(params, donate=True)
    if getattr(cfg, "image_grid_pinpoints", None) is not None:      # LLaVA-NeXT
        from duet_jax.api_next import LlavaNext
        return LlavaNext(cfg, module, params, path)
    return Llava(cfg, module, params, path)


def _module_class(cfg):
    """LlavaModel, or LlavaNextModel for a LLaVA-NeXT (AnyRes) config."""
    if getattr(cfg, "image_grid_pinpoints", None) is not None:
        from duet_jax.models.llava_next import LlavaNextModel
        return LlavaNextModel
    return LlavaModel


def _param_shapes(path: str, vision_tower: Optional[str]):
    """ShapeDtypeStruct pytree of a checkpoint's params, from its config alone."""
    from duet_jax.checkpoints.load import checkpoint_kind, llava_config, read_json
    if checkpoint_kind(path) == "converted":
        cfg = llava_config(read_json(os.path.join(path, "config.json")))
    else:
        from duet_jax.checkpoints.load import plan_conversion
        cfg = plan_conversion(path, vision_tower).config
    return jax.eval_shape(_module_class(cfg)(cfg).init, jax.random.key(0))
