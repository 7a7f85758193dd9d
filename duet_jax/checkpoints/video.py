"""Video-LLaVA checkpoint layout: LLaVA's table with the CLIP rows under two towers.

Reading accepts every prefix variant transformers 5's
`VideoLlavaForConditionalGeneration.from_pretrained` accepts (its conversion
mapping moves `^image_tower`, `^video_tower`, `^language_model`,
`^multi_modal_projector` under `model.` and `language_model.lm_head` to
`lm_head`; the CLIPVisionModel mapping drops `vision_model.`):

    image_tower  (model.)?image_tower.(vision_model.)?...
    video_tower  (model.)?video_tower.(vision_model.)?...
    text         (model.)?language_model.(model.)?...
    head         (language_model.)?lm_head.weight
    projector    (model.)?multi_modal_projector....

Export writes the hub names of `LanguageBind/Video-LLaVA-7B-hf`
(`image_tower.vision_model.*`, `video_tower.vision_model.*`,
`language_model.model.*`, `language_model.lm_head.weight`, `multi_modal_projector.*`).
"""
from __future__ import annotations

import dataclasses
import os
import re

from duet_jax.checkpoints import layouts
from duet_jax.checkpoints.layouts import TABLE, Layout, Rule
from duet_jax.checkpoints.load import with_hf_defaults
from duet_jax.checkpoints.reader import CheckpointError
from duet_jax.models.video_llava import VideoLlavaConfig

FORMAT = "duet_jax.video_llava"
TOWERS = ("image_tower", "video_tower")


def _build_table():
    rows, split = [], {}
    for e in TABLE:
        if e.component != "vision":
            rows.append(e)
            continue
        split[e] = tuple(dataclasses.replace(e, path=(t,) + e.path[1:], component=t)
                         for t in TOWERS)
        rows.extend(split[e])
    return tuple(rows), split


VIDEO_TABLE, _SPLIT = _build_table()
_POSITION_IDS = re.compile(r"embeddings\.position_ids")
VIDEO_HF = Layout("video_llava", (
    Rule("image_tower", r"(?:model\.)?image_tower\.(?:vision_model\.)?", "image_tower.vision_model."),
    Rule("video_tower", r"(?:model\.)?video_tower\.(?:vision_model\.)?", "video_tower.vision_model."),
    Rule("text", r"(?:model\.)?language_model\.(?:model\.)?", "language_model.model."),
    Rule("head", r"(?:language_model\.)?", "language_model."),
    Rule("projector", r"(?:model\.)?multi_modal_projector\.", "multi_modal_projector."),
), table=VIDEO_TABLE, ignored=(
    ("image_tower", _POSITION_IDS), ("video_tower", _POSITION_IDS),
    ("text", re.compile(r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"))))


def is_video_config(d: dict) -> bool:
    return d.get("model_type") == "video_llava"


def leaf_shapes(cfg: VideoLlavaConfig) -> dict:
    """{Entry: full pytree shape} for this config (LLaVA's, the vision rows twice)."""
    shapes = {}
    for entry, shape in layouts.leaf_shapes(cfg.media("image")).items():
        for e in _SPLIT.get(entry, (entry,)):
            shapes[e] = shape
    return shapes


def resolve_hf_config(d: dict) -> dict:
    """Fill in the defaults transformers' `VideoLlavaConfig` applies."""
    from transformers import VideoLlavaConfig as HFVideoLlavaConfig
    return with_hf_defaults(HFVideoLlavaConfig, d, "Video-LLaVA")


def video_config(hf_config: dict) -> VideoLlavaConfig:
    try:
        return VideoLlavaConfig.from_hf(hf_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: {e}") from None


def plan_video_conversion(path: str, weights, raw: dict):
    """`load.plan_conversion` for a Video-LLaVA dir: config, key mapping, completeness."""
    from duet_jax.checkpoints.load import Plan, _check_complete, _map_keys
    if not any(isinstance(layouts.parse_key(k, VIDEO_HF), tuple) for k in weights.tensors):
        sample = ", ".join(repr(k) for k in sorted(weights.tensors)[:3]) or "no keys at all"
        raise CheckpointError(f"config.json says model_type 'video_llava' but no weight uses the "
                              f"Video-LLaVA layout (keys like {sample}); fix config.json")
    hf_config = resolve_hf_config(raw)
    cfg = video_config(hf_config)
    shapes = leaf_shapes(cfg)
    src = _map_keys(weights, VIDEO_HF, shapes, {})
    _check_complete([src], shapes, lambda e: VIDEO_HF, path)
    return Plan(hf_config, cfg, "Video-LLaVA HF (image_tower.*, video_tower.*)", [src], shapes,
                [(path, None)])


def converted_is_video(path: str) -> bool:
    from duet_jax.checkpoints.load import MARKER, read_json
    return read_json(os.path.join(path, MARKER)).get("format") == FORMAT
