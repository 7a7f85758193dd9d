"""Typed training configuration: frozen dataclasses built from YAML plus `--set` overrides.

    cfg = load_config("configs/tiny.yaml", ["optim.lr=1e-4", "max_steps=5"])

A YAML file may name a `base:` file (relative to itself, or `duet_jax://...`) whose
keys it overrides section by section. Paths written in a file (PATH_KEYS) resolve
against that file's folder, or inside the package for `duet_jax://...`
(`duet_jax.resources.resolve_path`); `--set` paths against the working directory.
Override values are parsed as YAML (`[1, 2]`, `null`, `true`) and coerced to the
declared field type. Any unknown key, in a file or an override, raises `ConfigError`
naming the closest valid keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from typing import Any, Mapping, Optional, Sequence, Tuple

import yaml

from duet_jax.resources import resolve_path

from duet_jax.errors import InputError


class ConfigError(InputError):
    """A bad config key or value; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class RandomModelConfig:
    """Sizes of a random LLaVA built from scratch (tests, the tiny config, benchmarks)."""
    image_size: int = 56
    patch_size: int = 14
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden_size: int = 64
    text_intermediate_size: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 4
    tokenizer_vocab_size: int = 600   # SentencePiece pieces trained on the data set's text


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    checkpoint: Optional[str] = None        # HF / original LLaVA / converted duet_jax dir
    vision_tower: Optional[str] = None      # CLIP dir, only for original LLaVA checkpoints
    tokenizer: Optional[str] = None         # default: the checkpoint dir
    random: Optional[RandomModelConfig] = None   # used when checkpoint is null
    dtype: str = "bfloat16"                 # compute dtype
    param_dtype: str = "float32"            # master weights and optimizer state
    remat: bool = True                      # jax.checkpoint every decoder layer


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train_json: str = ""
    image_folder: str = ""
    template: str = "vicuna_v1"             # vicuna_v1 (fine-tune) | plain (pretrain)
    max_length: int = 2048
    length_buckets: Tuple[int, ...] = ()    # () -> 4 evenly spaced buckets up to max_length
    shuffle: bool = True
    num_threads: int = 2
    prefetch: int = 2
    check_images: bool = True


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    schedule: str = "cosine"                # cosine | linear | constant (after warmup)
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0              # <= 0 disables clipping
    recipe: str = "finetune"                # finetune: projector + LLM | pretrain: projector | full


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1                          # -1 takes the remaining devices
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    save_every: int = 500                   # optimizer steps; the last step is always saved
    keep: int = 2                           # newest checkpoints kept
    async_save: bool = True
    export_hf: bool = True                  # write DIR/hf (llava-hf layout) at the end
    export_dtype: Optional[str] = None      # e.g. bfloat16; null keeps the master dtype


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    initialize: bool = False                # call jax.distributed.initialize (multi-host)
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ResumeConfig:
    allow_changes: bool = False             # resume though run-changing keys differ (resume.py)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    global_batch_size: int = 128            # samples per optimizer step
    micro_batch_size: int = 16              # samples per forward/backward, over all devices
    num_epochs: int = 1
    max_steps: int = -1                     # > 0 caps the optimizer steps
    reduction: Any = None                   # preset name, {preset/name, stage1, stage2} or null
    segment_bucket: int = 16                # Stage-2 buffer lengths round up to this
    compilation_cache_dir: Optional[str] = None
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    distributed: DistributedConfig = DistributedConfig()
    resume: ResumeConfig = ResumeConfig()

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // self.micro_batch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- schema walking

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


def valid_keys(cls=TrainConfig, prefix: str = "") -> list:
    """Every dotted key of the schema (sections and leaves)."""
    out = []
    for name, tp in _hints(cls).items():
        key = prefix + name
        out.append(key)
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            out.extend(valid_keys(inner, key + "."))
    return out


def _unknown(key: str, candidates: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(close)}?" if close
            else f"valid keys: {', '.join(sorted(candidates))}")
    return ConfigError(f"unknown config key {key!r} ({where}); {hint}")


def check_key(dotted: str, where: str = "--set") -> None:
    """Raise ConfigError if `dotted` is not a key of TrainConfig (free-form fields admit any tail)."""
    cls, parts = TrainConfig, dotted.split(".")
    for i, part in enumerate(parts):
        hints = _hints(cls)
        if part not in hints:
            raise _unknown(dotted, valid_keys(), where)
        inner, _ = _unwrap_optional(hints[part])
        if inner is Any:
            return      # e.g. reduction.stage2.layers: validated by duet_jax.reduction
        if i < len(parts) - 1 and not dataclasses.is_dataclass(inner):
            raise ConfigError(f"config key {dotted!r} ({where}): {'.'.join(parts[:i + 1])} is a "
                              f"value, not a section")
        cls = inner


# --------------------------------------------------------------------------- building

def _coerce(value, tp, key: str):
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ConfigError(f"config key {key!r} may not be null")
    if inner is Any:
        return value
    if dataclasses.is_dataclass(inner):
        return build(inner, value, key)
    bad = ConfigError(f"config key {key!r} expects {getattr(inner, '__name__', inner)}, "
                      f"got {value!r}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if inner is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not f.is_integer():
            raise bad
        return int(f)
    if inner is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)   # YAML reads "1e-4" as a string (1.1 needs a dot)
        except (TypeError, ValueError):
            raise bad from None
    if inner is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    if typing.get_origin(inner) is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        item = typing.get_args(inner)[0]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    raise ConfigError(f"config key {key!r} has an unsupported type {inner}")


def build(cls, mapping, prefix: str = ""):
    """A `cls` instance from a (nested) mapping; unknown keys raise ConfigError."""
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"config section {prefix or '<top>'!r} must be a mapping, "
                          f"got {type(mapping).__name__}")
    hints = _hints(cls)
    kwargs = {}
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in hints:
            raise _unknown(key, valid_keys(), "in the config file")
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# Config keys that hold file or folder paths.
PATH_KEYS = ("output_dir", "compilation_cache_dir", "model.checkpoint", "model.vision_tower",
             "model.tokenizer", "data.train_json", "data.image_folder")


def resolve_paths(raw: Mapping, base_dir: Optional[str]) -> dict:
    """`raw` with its PATH_KEYS resolved (`duet_jax.resources.resolve_path`)."""
    out = dict(raw)
    for key in PATH_KEYS:
        *sections, leaf = key.split(".")
        node = out
        for name in sections:
            if not isinstance(node.get(name), Mapping):
                break
            child = node[name] = dict(node[name])   # copy: the caller's dict stays as read
            node = child
        else:
            if leaf in node:
                node[leaf] = resolve_path(node[leaf], base_dir)
    return out


def read_yaml(path: str, _seen: Tuple[str, ...] = ()) -> dict:
    """A YAML config as a dict, with its `base:` chain merged in."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"config 'base' chain loops back to {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML ({where}"
                          f"{getattr(e, 'problem', None) or e}); fix its syntax") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    raw = resolve_paths(raw, os.path.dirname(path))
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(read_yaml(resolve_path(str(base), os.path.dirname(path)), _seen + (path,)), raw)


def parse_override(text: str) -> Tuple[str, Any]:
    """'optim.lr=1e-4' -> ('optim.lr', '1e-4' parsed as YAML)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    check_key(key)
    return key, yaml.safe_load(value) if value.strip() else ""


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    out = dict(raw)
    for text in overrides:
        key, value = parse_override(text)
        node, parts = out, key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[parts[-1]] = resolve_path(value, None) if key in PATH_KEYS else value
    return out


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file (or defaults when None) + `key=value` overrides -> validated TrainConfig."""
    raw = read_yaml(path) if path else {}
    cfg = build(TrainConfig, apply_overrides(raw, overrides))
    validate(cfg)
    return cfg


def _check_numbers(cfg: TrainConfig) -> None:
    """Values that no run can use: a negative rate, an empty batch, a zero length."""
    o = cfg.optim
    positive = {"optim.lr": o.lr, "optim.eps": o.eps, "data.max_length": cfg.data.max_length,
                **{f"data.length_buckets[{i}]": n for i, n in enumerate(cfg.data.length_buckets)},
                **{f"model.random.{k}": v for k, v in
                   dataclasses.asdict(cfg.model.random or RandomModelConfig()).items()}}
    at_least_zero = {"seed": cfg.seed, "optim.weight_decay": o.weight_decay,
                     "data.num_threads": cfg.data.num_threads, "data.prefetch": cfg.data.prefetch}
    below_one = {"optim.b1": o.b1, "optim.b2": o.b2}
    for key, value in {**positive, **at_least_zero, **below_one}.items():
        low_ok = value > 0 if key in positive else value >= 0
        if not (math.isfinite(value) and low_ok and (key not in below_one or value < 1)):
            rule = ("> 0" if key in positive else ">= 0") + (" and < 1" if key in below_one else "")
            raise ConfigError(f"{key}={value} is out of range; it must be {rule}")
    if not math.isfinite(o.max_grad_norm):
        raise ConfigError(f"optim.max_grad_norm={o.max_grad_norm}; use a number (<= 0 disables "
                          "clipping)")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise ConfigError(f"max_steps={cfg.max_steps}; use -1 (train num_epochs) or a step "
                          "count >= 1")
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}={size}; use a device count >= 1, or -1 for the rest")


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks that need no model or data."""
    _check_numbers(cfg)
    if (cfg.micro_batch_size < 1 or cfg.global_batch_size < 1
            or cfg.global_batch_size % cfg.micro_batch_size):
        raise ConfigError(f"global_batch_size={cfg.global_batch_size} must be a positive multiple "
                          f"of micro_batch_size={cfg.micro_batch_size}")
    if cfg.model.checkpoint is None and cfg.model.random is None:
        raise ConfigError("give model.checkpoint (a LLaVA dir) or model.random (sizes of a "
                          "random model)")
    if not cfg.data.train_json:
        raise ConfigError("data.train_json is required (a LLaVA-JSON file)")
    d = cfg.distributed
    if d.num_processes is not None and (d.num_processes < 1 or not 0 <= (d.process_id or 0)
                                        < d.num_processes):
        raise ConfigError(f"distributed.process_id={d.process_id} with num_processes="
                          f"{d.num_processes}; process ids run from 0 to num_processes - 1")
    choices = {"optim.schedule": (cfg.optim.schedule, ("cosine", "linear", "constant")),
               "optim.recipe": (cfg.optim.recipe, ("finetune", "pretrain", "full"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}; use one of {allowed}")
    if not 0.0 <= cfg.optim.warmup_ratio < 1.0:
        raise ConfigError(f"optim.warmup_ratio={cfg.optim.warmup_ratio} must be in [0, 1)")
    if cfg.checkpoint.save_every < 1 or cfg.checkpoint.keep < 1:
        raise ConfigError("checkpoint.save_every and checkpoint.keep must be >= 1")
    if cfg.segment_bucket < 1 or cfg.num_epochs < 1:
        raise ConfigError("segment_bucket and num_epochs must be >= 1")
