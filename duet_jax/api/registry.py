"""Which handle a checkpoint directory gets: the family registry, keyed by config.json's
`model_type` (HF, original LLaVA and converted directories all carry one)."""
from __future__ import annotations

import json
import os
from typing import Optional

from duet_jax.api.base import Handle, check_directory
from duet_jax.api.llava import Llava
from duet_jax.api.llava_next import LlavaNext
from duet_jax.api.llava_onevision import LlavaOnevision
from duet_jax.api.qwen25vl import Qwen25VL
from duet_jax.api.video_llava import VideoLlava

# model_type -> handle class; anything else is read as LLaVA-1.5 (original LLaVA dirs say
# `llava_llama`), whose loader reports a directory it cannot read in one line.
FAMILIES = {"llava": Llava, "llava_llama": Llava, "llava_next": LlavaNext,
            "video_llava": VideoLlava, "qwen2_5_vl": Qwen25VL, "llava_onevision": LlavaOnevision}


def model_type(path: str) -> Optional[str]:
    """config.json's `model_type`, or None where there is no readable one."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            value = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None     # the family's loader reports the problem with its own message
    return value if isinstance(value, str) else None


def handle_class(path: str) -> type:
    return FAMILIES.get(model_type(path), Llava)


def load_llava(path: str, dtype: str = "float32", *, compute_dtype: Optional[str] = None,
               mesh=None, vision_tower: Optional[str] = None, remat: bool = False,
               clip_text_tower: Optional[str] = None) -> Handle:
    """Loads any supported checkpoint directory into its family's handle: an HF LLaVA dir
    (llava-hf or legacy layout), an original LLaVA dir (`vision_tower=` its CLIP dir),
    LLaVA-NeXT, LLaVA-OneVision, Video-LLaVA, Qwen2.5-VL, or a `python -m convert` output of any of them.

    dtype: params dtype; compute_dtype defaults to it. mesh: a `jax.sharding.Mesh` to
    load the params straight onto (see duet_jax.sharding). clip_text_tower: an HF CLIPModel
    dir whose text tower CDPruner reads (LLaVA-1.5 only; docs/BASELINES.md §9).
    """
    path = check_directory(path)
    cls = handle_class(path)
    extra = {}
    if clip_text_tower is not None:
        if "cdpruner" not in cls.zoo_methods:
            raise ValueError(f"clip_text_tower={clip_text_tower} is read by LLaVA-1.5 only "
                             f"(CDPruner), not {cls.__name__}; leave it out")
        if not os.path.isdir(clip_text_tower):
            raise FileNotFoundError(f"clip_text_tower {clip_text_tower} is not a directory; pass "
                                    "an HF CLIPModel dir (openai/clip-vit-large-patch14-336)")
        extra["clip_text_tower"] = os.fspath(clip_text_tower)
    return cls.load(path, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh,
                    vision_tower=vision_tower, remat=remat, **extra)


load = load_llava
