"""The handle contract every model family implements (`duet_jax.load_llava(path)` returns one).

    model.encode(prompts, images=None, videos=None) -> batch dict (right-padded, batched)
    model.logits(input_ids, pixel_values=None, attention_mask=None, reduction=None, **media)
    model.generate_batch(batch, *, max_new_tokens, reduction, temperature, top_p, seed)
        -> duet_jax.generation.decode.Generated (tokens [B, T], lengths [B], forward)
    model.generate(prompts, images=None, videos=None, *, ...) -> list[str]
    model.reduction(preset_or_config, media="image") -> the validated ReductionConfig or None
    model.shape_key(image_path) -> the compile-relevant shape of an image (for batching)
    model.pad_length(batch, multiple) -> the batch right-padded to a multiple of tokens

`media` names what a family reads ("image", "video"); the evaluation runner uses
only this contract. Handles are thin, frozen containers: config + pure module +
params (+ the directory the tokenizer and processor load from).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.generation.decode import generate_tokens
from duet_jax.reduction import resolve_reduction, zoo_method

def check_directory(path) -> str:
    """`path` as a str, or FileNotFoundError saying what to pass."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise FileNotFoundError(f"{path} {what}; pass a model checkpoint directory (HF, original "
                                "LLaVA or a python -m convert output)")
    return path


# per-token batch keys: what `pad_length` grows, and the value it pads with (None: pad id)
TOKEN_KEYS = {"input_ids": None, "attention_mask": 0, "salient_mask": False}


@dataclasses.dataclass(frozen=True)
class Handle:
    """Config + pure module + params, and the directory tokenizer and processor load from."""
    config: Any
    module: Any
    params: Any
    path: Optional[str] = None

    media = ("image",)           # what `encode` / `generate` read besides text
    kept_pictures = True         # `eval.py run --save-kept` can draw its kept tokens
    zoo_methods = ()             # the zoo methods this family runs (reduction.ZOO_METHODS; docs/BASELINES.md §9)
    zoo_inputs = ()              # optional inputs zoo methods may read (reduction.METHOD_NEEDS)

    @functools.cached_property
    def tokenizer(self):
        from duet_jax.data.tokenize import load_tokenizer
        if self.path is None:
            raise ValueError("this model was not loaded from a directory; pass a tokenizer")
        return load_tokenizer(self.path)

    @functools.cached_property
    def image_processor(self):
        from duet_jax.data.images import load_image_processor
        return load_image_processor(self.path, image_size=self.config.vision.image_size)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def reduction(self, reduction, media: str = "image"):
        """Resolves a preset name / config / None and checks it fits this model and media."""
        red = resolve_reduction(reduction)
        if red is not None:
            method = zoo_method(red)
            if method is not None and method not in self.zoo_methods:
                runs = ", ".join(self.zoo_methods) or "none"
                raise ValueError(f"{red.name}: {method} is not wired into {type(self).__name__} "
                                 f"(its zoo methods: {runs}); use this family's presets")
            self.check_reduction(red, media)
        return red

    def check_reduction(self, red, media: str) -> None:
        """Raises ValueError (naming the preset and the fix) if `red` cannot run here."""
        raise NotImplementedError

    def shape_key(self, image_path: str) -> tuple:
        """The compile-relevant shape of an image file: () where every image is
        processed to one size; families with dynamic resolution override it."""
        return ()

    def pad_length(self, batch: dict, multiple: int) -> dict:
        """`batch` with its per-token arrays right-padded to a multiple of `multiple`
        (padding is masked: it changes no logit of a real row)."""
        length = batch["input_ids"].shape[1]
        extra = -length % multiple
        if not extra:
            return batch
        out = dict(batch)
        for key, fill in TOKEN_KEYS.items():
            if out.get(key) is not None:
                out[key] = np.pad(np.asarray(out[key]), ((0, 0), (0, extra)),
                                  constant_values=self.pad_id if fill is None else fill)
        return out

    @staticmethod
    def check_batch(prompts, **media) -> None:
        """Every entry point takes a batch: `prompts` a list of strings, each of `media`
        (images=, videos=) None or a list with one entry per prompt. A single string or
        image is refused with TypeError (not read as a batch of characters or pixels):
        `generate(["What?"], [image])` is the batch of one."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) \
                or not all(isinstance(p, str) for p in prompts):
            got = type(prompts).__name__ if isinstance(prompts, (str, bytes)) or not \
                isinstance(prompts, Sequence) else "a list holding non-strings"
            raise TypeError(f"prompts must be a list of strings (one per sample), got {got}; "
                            "for one prompt pass generate(['What?'], [image])")
        if not prompts:
            raise ValueError("prompts is empty; pass at least one prompt")
        for name, value in media.items():
            if value is not None and (isinstance(value, (str, bytes, os.PathLike))
                                      or not isinstance(value, (Sequence, np.ndarray))
                                      or isinstance(value, np.ndarray) and value.ndim < 4):
                raise TypeError(f"{name} must be a list with one entry per prompt (None for "
                                f"text-only), got a single {type(value).__name__}; wrap it: "
                                f"{name}=[...]")

    @staticmethod
    def check_generation(max_new_tokens, temperature: float = 0.0, top_p: float = 1.0) -> None:
        """ValueError naming the argument, before any work: generation needs at least one
        new token, a non-negative temperature and a top_p in (0, 1]."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")

    @staticmethod
    def check_pixels_used(input_ids, pixels, token_id: int, what: str = "image") -> None:
        """ValueError when a sample carries pixels (non-zero) but its prompt holds no
        `token_id` placeholder: the model would silently ignore that picture. Text-only
        rows of an `encode` batch carry zeros and pass."""
        if pixels is None:
            return
        ids = np.asarray(input_ids)
        flat = np.asarray(pixels).reshape(ids.shape[0], -1) if np.size(pixels) else None
        if flat is None:
            return
        unused = np.flatnonzero(np.any(flat != 0, axis=1) & ~np.any(ids == token_id, axis=1))
        if unused.size:
            raise ValueError(f"sample(s) {unused[:3].tolist()} carry {what} pixels but no {what} "
                             f"tokens (id {token_id}) in input_ids, so the {what} would be "
                             f"ignored; put <{what}> in the prompt (model.encode does), or pass "
                             "zeros for a text-only sample")

    def images_only(self, prompts: Sequence[str], images: Optional[Sequence],
                    videos: Optional[Sequence]) -> list:
        """The per-prompt images of an image-only family (None entries: text-only);
        ValueError unless there is one per prompt."""
        self.check_batch(prompts, images=images, videos=videos)
        if videos is not None:
            raise ValueError(f"{type(self).__name__} reads images only; pass images= (one per "
                             "prompt, None for text-only), not videos=")
        images = [None] * len(prompts) if images is None else list(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images; pass one image "
                             "(or None) per prompt")
        return images

    def encode(self, prompts: Sequence[str], images: Optional[Sequence] = None,
               videos: Optional[Sequence] = None) -> dict:
        raise NotImplementedError

    def generate_batch(self, batch: dict, *, max_new_tokens: int = 128, reduction=None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        raise NotImplementedError

    def _generate(self, module, params, batch: dict, pixels, red, *, max_new_tokens: int,
                  temperature: float, top_p: float, seed: int, media: str = "an image",
                  zoo_inputs=None):
        """`generate_tokens` on an encoded batch; Stage 2 needs `media` in every sample."""
        self.check_generation(max_new_tokens, temperature, top_p)
        every = bool(np.all(batch["has_image"]))
        if not np.any(batch["has_image"]):   # text only: no tower to run, nothing to reduce
            pixels, red, zoo_inputs = None, None, None
        if red is not None and not every and red.stage2 is not None:
            raise ValueError(f"Stage-2 generation needs {media} in every sample of the batch; "
                             "batch text-only prompts separately")
        eos = self.config.text.eos_token_id
        return generate_tokens(module, params, jnp.asarray(batch["input_ids"]),
                               jax.tree.map(jnp.asarray, pixels),
                               jnp.asarray(batch["attention_mask"]), reduction=red,
                               max_new_tokens=max_new_tokens, eos_id=-1 if eos is None else eos,
                               pad_id=self.pad_id, temperature=temperature,
                               top_p=top_p, rng=jax.random.key(seed),
                               salient_mask=jnp.asarray(batch["salient_mask"])
                               if "salient_mask" in batch else None,
                               images_in_every_sample=every,
                               **({} if zoo_inputs is None else {"zoo_inputs": zoo_inputs}))

    def decode_answers(self, out) -> list:
        """`Generated` -> decoded, stripped answers (special tokens skipped), one per row."""
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        return [self.tokenizer.decode(t[:n], skip_special_tokens=True).strip()
                for t, n in zip(tokens, lengths)]

    def generate(self, prompts: Sequence[str], images: Optional[Sequence] = None,
                 videos: Optional[Sequence] = None, *, max_new_tokens: int = 128,
                 reduction=None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> list:
        """Decoded, stripped answers (special tokens skipped), one per prompt. `prompts` is
        a list (one string per sample), `images` / `videos` a list with one entry per prompt;
        a single string or image is refused (TypeError): pass `["What?"], [image]`."""
        self.check_generation(max_new_tokens, temperature, top_p)
        out = self.generate_batch(self.encode(prompts, images, videos),
                                  max_new_tokens=max_new_tokens, reduction=reduction,
                                  temperature=temperature, top_p=top_p, seed=seed)
        return self.decode_answers(out)
