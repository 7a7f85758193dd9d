"""Load params of any family from an HF dir, an original LLaVA dir, or a converted duet_jax dir.

This module only dispatches: config.json (or the converted dir's marker) picks
the family (`llava`, `video`, `qwen25vl`), whose table goes through the one
`plan` mechanism. Conversion is planned before any tensor data is read: keys,
layer indices and (for safetensors) shapes are checked against the config
from the headers, so a bad checkpoint fails fast with one line. Data is then
streamed shard by shard, tensor by tensor (`plan.read_params`).
"""
from __future__ import annotations

import os
from typing import Optional

from duet_jax.checkpoints import llava, onevision, qwen25vl, video
from duet_jax.checkpoints.llava import FORMAT, llava_config, resolve_hf_config
from duet_jax.checkpoints.orbax_io import (MARKER, PARAMS_SUBDIR, is_converted,
                                           read_converted, restore_params, sharding_lookup)
from duet_jax.checkpoints.plan import (Family, Plan, check_shape, read_params,
                                       with_hf_defaults)
from duet_jax.checkpoints.reader import (CheckpointError, check_dir, find_weight_files,
                                         read_json)

FAMILIES = (llava.FAMILY, video.FAMILY, qwen25vl.FAMILY, onevision.FAMILY)

# the names other code imports from here (some live in the modules above)
__all__ = ["FAMILIES", "FORMAT", "MARKER", "PARAMS_SUBDIR", "CheckpointError", "Plan",
           "check_shape", "checkpoint_kind", "family_of", "family_of_format", "llava_config",
           "load_params", "plan_conversion", "read_converted_dir", "read_json", "read_params",
           "resolve_hf_config", "with_hf_defaults"]


def family_of(hf_config: dict) -> Family:
    """The family whose model_types has config.json's model_type; LLaVA's layout detection
    reports any other (or none) clearly."""
    model_type = hf_config.get("model_type")
    return next((f for f in FAMILIES if model_type in f.model_types), llava.FAMILY)


def family_of_format(fmt: str) -> Family:
    return next(f for f in FAMILIES if f.format == fmt)


def checkpoint_kind(path: str) -> str:
    """'converted', 'hf' or 'original' (from the directory's marker / config.json)."""
    check_dir(path)
    if is_converted(path):
        return "converted"
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json (expected an HF "
                              "LLaVA, Video-LLaVA or Qwen2.5-VL, original LLaVA or converted "
                              "duet_jax directory)")
    cfg = read_json(os.path.join(path, "config.json"))
    if cfg.get("model_type") in llava.MODEL_TYPES:
        return "hf"
    if cfg.get("model_type") == "llava_llama" or "mm_vision_tower" in cfg:
        return "original"
    return "hf"   # let the weight keys decide; detect_layout reports a mismatch clearly


def plan_conversion(path: str, vision_tower: Optional[str] = None) -> Plan:
    """Read config and weight headers of an HF (any family) or original LLaVA dir; check them."""
    if checkpoint_kind(path) == "converted":
        raise CheckpointError(f"{path} is already a converted duet_jax checkpoint")
    weights = find_weight_files(path)
    raw = read_json(os.path.join(path, "config.json"))
    return family_of(raw).plan(path, weights, raw, vision_tower)


def read_converted_dir(path: str):
    """-> (Family, its config, HF config dict, params dir) of a converted duet_jax dir."""
    fmt, hf_config, params_dir = read_converted(path, [f.format for f in FAMILIES])
    family = family_of_format(fmt)
    return family, family.config(hf_config), hf_config, params_dir


def load_params(path: str, dtype=None, shardings=None, vision_tower: Optional[str] = None):
    """-> (config, params) from an HF dir of any family, an original LLaVA dir or a converted
    dir: (LlavaConfig, ...) for LLaVA-1.5 / NeXT, (VideoLlavaConfig, ...) for Video-LLaVA,
    (Qwen25VLConfig, ...) for Qwen2.5-VL.

    dtype: cast the float params (None keeps the stored dtype).
    shardings: pytree of `jax.sharding.Sharding` matching the params; every leaf
    lands straight on it (None: the default device).
    vision_tower: CLIP checkpoint dir for an original LLaVA checkpoint.
    """
    import jax

    path = os.fspath(path)
    if checkpoint_kind(path) == "converted":
        _, cfg, _, params_dir = read_converted_dir(path)
        return cfg, restore_params(params_dir, dtype=dtype, shardings=shardings)
    plan = plan_conversion(path, vision_tower)
    placement = sharding_lookup(shardings, [e.path for e in plan.shapes])
    default = jax.local_devices()[0]
    params = read_params(plan, dtype, lambda p, a: jax.device_put(a, placement[p] or default))
    return plan.config, params
