"""The LLaVA-1.5 / LLaVA-NeXT family: its config parsing and its planner over `layouts`' table.

An HF dir (any prefix variant, see `layouts`) is one weight source; an
original LLaVA dir is two (the LLaVA dir and the CLIP dir it names, unless it
holds its tower), both mapped through the same `plan` mechanism.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from duet_jax.checkpoints import layouts
from duet_jax.checkpoints.layouts import CLIP, HF, ORIGINAL
from duet_jax.checkpoints.plan import (Family, Plan, check_complete, map_keys, parse_config,
                                       plan_hf, with_hf_defaults)
from duet_jax.checkpoints.reader import CheckpointError, find_weight_files, read_json
from duet_jax.models.config import LlavaConfig

FORMAT = "duet_jax.llava"
MODEL_TYPES = ("llava", "llava_next")


def resolve_hf_config(d: dict) -> dict:
    """Fill in the defaults transformers' `LlavaConfig` applies (config.py's defaults differ).

    A config that already spells out every field our dataclasses read (what
    `save_pretrained` writes) is returned as is, sparing the transformers import.
    """
    if _is_complete(d):
        return dict(d)
    from transformers import LlavaConfig as HFLlavaConfig
    if d.get("model_type") == "llava_next":
        from transformers import LlavaNextConfig as HFLlavaConfig
    return with_hf_defaults(HFLlavaConfig, d, "LLaVA")


def _is_complete(d: dict) -> bool:
    from duet_jax.models.config import TextConfig, VisionConfig

    def has_all(sub, cls, optional=()):
        names = {f.name for f in dataclasses.fields(cls)} - set(optional)
        return isinstance(sub, dict) and names <= set(sub)

    text = d.get("text_config")
    # head_dim defaults to hidden/heads in both; theta and scaling may live in rope_parameters
    rope_ok = isinstance(text, dict) and ("rope_parameters" in text or "rope_theta" in text)
    top = {f.name for f in dataclasses.fields(_config_class(d))} - {"vision", "text"}
    return (rope_ok and has_all(text, TextConfig, ("head_dim", "rope_theta", "rope_scaling"))
            and has_all(d.get("vision_config"), VisionConfig) and top <= set(d))


def _config_class(hf_config: dict):
    from duet_jax.models.anyres import LlavaNextConfig
    return LlavaNextConfig if hf_config.get("model_type") == "llava_next" else LlavaConfig


def llava_config(hf_config: dict) -> LlavaConfig:
    """LlavaConfig, or LlavaNextConfig for model_type 'llava_next'."""
    return parse_config(_config_class(hf_config), hf_config)


def plan_llava(path: str, weights, raw: dict, vision_tower: Optional[str] = None) -> Plan:
    """Plan an HF LLaVA dir or an original LLaVA dir (+ its CLIP dir)."""
    layout = layouts.detect_layout(weights.tensors, raw)
    if layout is HF:
        return plan_hf(FAMILY, path, weights, raw)
    clip_dir = _vision_tower_dir(path, raw, vision_tower)
    clip_raw = read_json(os.path.join(clip_dir, "config.json"))
    image_id = layouts.tokenizer_image_id(path)
    text_vocab = raw.get("vocab_size")
    if image_id is None:
        # Convention: the first id past the vocabulary; no text token can collide with it
        # (llava-hf itself appended <image> at the old vocab size, 32000 for LLaVA-1.5).
        image_id = int(text_vocab) if text_vocab is not None else 32000
    synth = dict(layouts.original_hf_config(raw, clip_raw, image_id), image_seq_length=0)
    hf_config = resolve_hf_config(synth)
    hf_config["image_seq_length"] = llava_config(hf_config).num_image_tokens
    cfg = llava_config(hf_config)
    shapes = layouts.leaf_shapes(cfg)
    claimed: dict = {}
    sources = [map_keys(weights, ORIGINAL, shapes, claimed, FAMILY.name)]
    vision_inside = any(e.component == "vision" for e, _ in claimed)
    if not vision_inside:   # the usual case: LLaVA names its tower; take it from the CLIP dir
        clip_weights = find_weight_files(clip_dir)
        keep = (lambda k: k.startswith("vision_model.")) if clip_raw.get("model_type") == "clip" else None
        sources.insert(0, map_keys(clip_weights, CLIP, shapes, claimed, FAMILY.name, keep))
    display = lambda e: CLIP if e.component == "vision" and not vision_inside else ORIGINAL
    check_complete(sources, shapes, display, path)
    return Plan(hf_config, cfg, "original LLaVA (model.layers.*, model.mm_projector.*)",
                sources, shapes, [(path, None), (clip_dir, ("preprocessor_config.json",))])


def _vision_tower_dir(path: str, raw: dict, vision_tower: Optional[str]) -> str:
    named = raw.get("mm_vision_tower") or raw.get("vision_tower")
    if vision_tower is None and named and os.path.isdir(str(named)):
        vision_tower = named
    if vision_tower is None:
        raise CheckpointError(f"{path} is an original LLaVA checkpoint whose vision tower is "
                              f"named {named!r}; pass that CLIP checkpoint directory with "
                              "--vision-tower DIR (vision_tower= in load_params)")
    if not os.path.isfile(os.path.join(vision_tower, "config.json")):
        raise CheckpointError(f"--vision-tower {vision_tower} is not a CLIP checkpoint directory "
                              "(no config.json)")
    return vision_tower


FAMILY = Family("LLaVA", FORMAT, MODEL_TYPES, layout=lambda cfg: HF, config=llava_config,
                shapes=layouts.leaf_shapes, resolve=resolve_hf_config, describe=layouts.hf_variant,
                planner=plan_llava)
