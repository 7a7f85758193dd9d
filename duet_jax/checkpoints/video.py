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
from functools import partial

from duet_jax.checkpoints import layouts
from duet_jax.checkpoints.layouts import IGNORED_BUFFERS, TABLE
from duet_jax.checkpoints.plan import Family, Layout, Rule, parse_config, with_hf_defaults
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
_BUFFERS = dict(IGNORED_BUFFERS)
VIDEO_HF = Layout("video_llava", (
    Rule("image_tower", r"(?:model\.)?image_tower\.(?:vision_model\.)?", "image_tower.vision_model."),
    Rule("video_tower", r"(?:model\.)?video_tower\.(?:vision_model\.)?", "video_tower.vision_model."),
    Rule("text", r"(?:model\.)?language_model\.(?:model\.)?", "language_model.model."),
    Rule("head", r"(?:language_model\.)?", "language_model."),
    Rule("projector", r"(?:model\.)?multi_modal_projector\.", "multi_modal_projector."),
), VIDEO_TABLE, (("image_tower", _BUFFERS["vision"]), ("video_tower", _BUFFERS["vision"]),
                 ("text", _BUFFERS["text"])))


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


FAMILY = Family("Video-LLaVA", FORMAT, ("video_llava",), layout=lambda cfg: VIDEO_HF,
                config=partial(parse_config, VideoLlavaConfig), shapes=leaf_shapes,
                resolve=resolve_hf_config,
                describe=lambda keys: "Video-LLaVA HF (image_tower.*, video_tower.*)")
