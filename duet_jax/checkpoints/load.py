"""Load LLaVA params from an HF dir, an original LLaVA dir, or a converted duet_jax dir.

Conversion is planned before any tensor data is read: keys, layer indices and
(for safetensors) shapes are checked against the config from the headers, so
a bad checkpoint fails fast with one line. Data is then streamed shard by
shard, tensor by tensor; a stacked leaf `[num_layers, ...]` is assembled in one
buffer and handed to `place` as soon as its last layer arrives.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import numpy as np

from duet_jax.checkpoints import layouts
from duet_jax.checkpoints.layouts import CLIP, HF, IGNORED, ORIGINAL, Entry, Layout
from duet_jax.checkpoints.orbax_io import (cast_dtype, restore_params, sharding_lookup,
                                           unflatten_tree)
from duet_jax.checkpoints.reader import (CheckpointError, WeightFiles, find_weight_files,
                                         iter_bin, iter_safetensors)
from duet_jax.models.config import LlavaConfig

MARKER = "duet_jax_checkpoint.json"     # marks a converted directory
PARAMS_SUBDIR = "params"
FORMAT = "duet_jax.llava"


@dataclasses.dataclass
class Source:
    files: WeightFiles
    mapping: dict                 # stored key -> (Entry, layer index or None)


@dataclasses.dataclass
class Plan:
    """Everything known about a PyTorch checkpoint before reading its data."""
    hf_config: dict               # resolved HF LlavaConfig dict (what config.json should say)
    config: LlavaConfig
    description: str              # e.g. "legacy HF (language_model.model.*)"
    sources: list                 # [Source], reading order
    shapes: dict                  # Entry -> full pytree shape
    asset_dirs: list              # [(dir, file names or None = all)]: tokenizer / processor files


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return d


def checkpoint_kind(path: str) -> str:
    """'converted', 'hf' or 'original' (from the directory's marker / config.json)."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist; pass an existing checkpoint directory")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds it")
    if os.path.isfile(os.path.join(path, MARKER)):
        return "converted"
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json (expected an HF "
                              "LLaVA, original LLaVA or converted duet_jax directory)")
    cfg = read_json(os.path.join(path, "config.json"))
    if cfg.get("model_type") in ("llava", "llava_next"):
        return "hf"
    if cfg.get("model_type") == "llava_llama" or "mm_vision_tower" in cfg:
        return "original"
    return "hf"   # let the weight keys decide; detect_layout reports a mismatch clearly


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


def with_hf_defaults(hf_config_class, d: dict, family: str) -> dict:
    """`d` as transformers' `hf_config_class` completes it (minus bookkeeping keys)."""
    try:
        resolved = hf_config_class.from_dict(dict(d)).to_dict()
    except Exception as e:   # transformers validates with assorted exception types
        raise CheckpointError(f"config.json is not a valid {family} config: {e}") from None
    for k in ("_name_or_path", "transformers_version"):
        resolved.pop(k, None)
    return resolved


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
    try:
        return _config_class(hf_config).from_hf(hf_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: {e}") from None


def plan_conversion(path: str, vision_tower: Optional[str] = None) -> Plan:
    """Read config and weight headers of an HF or original LLaVA dir and check them."""
    kind = checkpoint_kind(path)
    if kind == "converted":
        raise CheckpointError(f"{path} is already a converted duet_jax checkpoint")
    weights = find_weight_files(path)
    raw = read_json(os.path.join(path, "config.json"))
    from duet_jax.checkpoints import video
    if video.is_video_config(raw):   # Video-LLaVA: its own table (two CLIP towers)
        return video.plan_video_conversion(path, weights, raw)
    layout = layouts.detect_layout(weights.tensors, raw)
    if layout is HF:
        hf_config = resolve_hf_config(raw)
        cfg = llava_config(hf_config)
        shapes = layouts.leaf_shapes(cfg)
        src = _map_keys(weights, HF, shapes, {})
        _check_complete([src], shapes, lambda e: HF, path)
        return Plan(hf_config, cfg, layouts.hf_variant(weights.tensors), [src], shapes,
                    [(path, None)])
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
    sources = [_map_keys(weights, ORIGINAL, shapes, claimed)]
    vision_inside = any(e.component == "vision" for e, _ in claimed)
    if not vision_inside:   # the usual case: LLaVA names its tower; take it from the CLIP dir
        clip_weights = find_weight_files(clip_dir)
        keep = (lambda k: k.startswith("vision_model.")) if clip_raw.get("model_type") == "clip" else None
        sources.insert(0, _map_keys(clip_weights, CLIP, shapes, claimed, keep))
    display = lambda e: CLIP if e.component == "vision" and not vision_inside else ORIGINAL
    _check_complete(sources, shapes, display, path)
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


def _map_keys(weights: WeightFiles, layout: Layout, shapes: dict, claimed: dict,
              keep: Optional[Callable] = None) -> Source:
    """Map stored keys to (Entry, layer); reject unknown keys, duplicates and wrong shapes."""
    mapping, unexpected = {}, []
    for key, info in weights.tensors.items():
        if keep is not None and not keep(key):
            continue
        parsed = layouts.parse_key(key, layout)
        if parsed is IGNORED:
            continue
        if parsed is None or parsed[0] not in shapes:
            if parsed is not None and parsed[0].component == "head":
                continue    # tied embeddings: lm_head is the embedding, as in HF
            unexpected.append(key)
            continue
        entry, layer = parsed
        if entry.stacked and layer >= shapes[entry][0]:
            unexpected.append(f"{key} (config has {shapes[entry][0]} layers)")
            continue
        if (entry, layer) in claimed:
            raise CheckpointError(f"weights {claimed[entry, layer]!r} and {key!r} are the same "
                                  "parameter under two names; keep one of them")
        if info.shape is not None:
            check_shape(key, info.shape, entry, shapes)
        claimed[entry, layer] = key
        mapping[key] = (entry, layer)
    if unexpected:
        raise CheckpointError(f"{weights.directory} has {len(unexpected)} unexpected weights: "
                              f"{_few(unexpected)}; they do not belong to a LLaVA model with "
                              "this config.json")
    return Source(weights, mapping)


def _check_complete(sources: list, shapes: dict, display: Callable, path: str) -> None:
    have = {v for s in sources for v in s.mapping.values()}
    missing = []
    for entry, shape in shapes.items():
        for layer in (range(shape[0]) if entry.stacked else [None]):
            if (entry, layer) not in have:
                missing.append(layouts.torch_name(entry, layer, display(entry)))
    if missing:
        raise CheckpointError(f"{path} is missing {len(missing)} weights that config.json needs: "
                              f"{_few(missing)}; the checkpoint is incomplete or the config is wrong")


def _few(names: list, n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")


def check_shape(key: str, shape: tuple, entry: Entry, shapes: dict) -> None:
    want = shapes[entry][1:] if entry.stacked else shapes[entry]
    want = layouts.torch_shape(want, entry.kind)
    if tuple(shape) != want:
        raise CheckpointError(f"weight {key!r} has shape {list(shape)} but config.json implies "
                              f"{list(want)}; the config and the weights disagree")


def read_params(plan: Plan, dtype=None, place: Optional[Callable] = None,
                progress: Optional[bool] = None) -> dict:
    """Stream every planned tensor into the param pytree.

    place(path, np_array) is called once per finished leaf (e.g. jax.device_put
    onto its sharding); its result goes into the tree and the host buffer is dropped.
    progress: tqdm bar; None shows it only on a terminal.
    """
    from tqdm import tqdm

    out_dtype = cast_dtype(dtype)
    place = place or (lambda path, arr: arr)
    leaf_dtype = _planned_dtypes(plan, out_dtype)
    buffers, counts, flat = {}, {}, {}
    total = sum(len(s.mapping) for s in plan.sources)
    disable = None if progress is None else not progress
    with tqdm(total=total, unit="tensor", desc="reading weights", disable=disable) as bar:
        for src in plan.sources:
            for file in src.files.files:
                wanted = [k for k in src.files.keys_in(file) if k in src.mapping]
                if not wanted:
                    continue
                stream = (iter_safetensors(file, [src.files.tensors[k] for k in wanted])
                          if src.files.kind == "safetensors" else iter_bin(file))
                for key, arr in stream:
                    if key not in src.mapping:
                        continue
                    entry, layer = src.mapping[key]
                    check_shape(key, arr.shape, entry, plan.shapes)
                    leaf = layouts.to_pytree(arr, entry.kind)
                    dt = leaf_dtype.get(entry) or arr.dtype
                    if not entry.stacked:
                        # a transposed view is fine: `place` or the caller copies it once
                        flat[entry.path] = place(entry.path, leaf.astype(dt, copy=False))
                    else:
                        if entry not in buffers:
                            buffers[entry] = np.empty(plan.shapes[entry], dt)
                            counts[entry] = 0
                        buffers[entry][layer] = leaf
                        counts[entry] += 1
                        if counts[entry] == plan.shapes[entry][0]:
                            flat[entry.path] = place(entry.path, buffers.pop(entry))
                    del arr, leaf
                    bar.update()
    return unflatten_tree(flat)


def _planned_dtypes(plan: Plan, out_dtype) -> dict:
    """Entry -> output dtype: the requested one, else the stored one (promoted across layers)."""
    if out_dtype is not None:
        return {e: out_dtype for e in plan.shapes}
    stored: dict = {}
    for src in plan.sources:
        for key, (entry, _) in src.mapping.items():
            stored.setdefault(entry, []).append(src.files.tensors[key].dtype)
    return {e: np.result_type(*d) for e, d in stored.items() if all(x is not None for x in d)}


def load_params(path: str, dtype=None, shardings=None, vision_tower: Optional[str] = None):
    """-> (LlavaConfig, params) from an HF LLaVA dir, an original LLaVA dir or a converted dir
    ((VideoLlavaConfig, params) for a Video-LLaVA one, see `duet_jax.checkpoints.video`).

    dtype: cast the float params (None keeps the stored dtype).
    shardings: pytree of `jax.sharding.Sharding` matching the params; every leaf
    lands straight on it (None: the default device).
    vision_tower: CLIP checkpoint dir for an original LLaVA checkpoint.
    """
    import jax

    path = os.fspath(path)
    if checkpoint_kind(path) == "converted":
        from duet_jax.checkpoints import video
        marker = read_json(os.path.join(path, MARKER))
        if marker.get("format") not in (FORMAT, video.FORMAT):
            raise CheckpointError(f"{path}/{MARKER} has format {marker.get('format')!r}, "
                                  f"expected {FORMAT!r} or {video.FORMAT!r}")
        config = read_json(os.path.join(path, "config.json"))
        cfg = video.video_config(config) if marker["format"] == video.FORMAT else llava_config(config)
        params_dir = os.path.join(path, marker.get("params", PARAMS_SUBDIR))
        return cfg, restore_params(params_dir, dtype=dtype, shardings=shardings)
    plan = plan_conversion(path, vision_tower)
    placement = sharding_lookup(shardings, [e.path for e in plan.shapes])
    default = jax.local_devices()[0]
    params = read_params(plan, dtype, lambda p, a: jax.device_put(a, placement[p] or default))
    return plan.config, params
