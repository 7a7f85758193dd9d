"""Resuming a run: the config must be the one the checkpoints were written with, and the
newest readable checkpoint is the one restored.

A resume whose config differs from the run's saved `output_dir/config.yaml` in a key
that changes what is trained (optimizer, schedule, batch sizes, step count, data,
reduction, model) is refused with the differing keys named: the continued curve would
be neither the old run nor a new one. `--set resume.allow_changes=true` accepts them.
Keys that only say where or how fast the run goes (paths of outputs, mesh, threads,
checkpoint cadence, processes) may change freely.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import yaml

from duet_jax.training.config import ConfigError, TrainConfig

# Key prefixes a resume may change: where the run writes, how it is laid out on devices
# and hosts, how often it saves, how fast data is read. Everything else changes the run.
FREE_KEYS = ("output_dir", "compilation_cache_dir", "mesh.", "checkpoint.", "distributed.",
             "resume.", "data.num_threads", "data.prefetch", "data.check_images",
             "data.image_folder", "model.remat", "model.tokenizer", "model.vision_tower")


def _flat(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _normal(value):
    """YAML round trip of a value (tuples become lists, 1e-3 stays a float)."""
    return json.loads(json.dumps(value))


def run_changes(saved: Mapping, cfg: TrainConfig) -> list:
    """[(key, saved value, new value)] of the run-changing keys that differ."""
    old, new = _flat(saved), _flat(_normal(cfg.to_dict()))
    changed = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(FREE_KEYS):
            continue
        a, b = old.get(key), new.get(key)
        if _normal(a) != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                    and float(a) == float(b)):
            changed.append((key, a, b))
    return changed


def saved_config(output_dir: str) -> Optional[dict]:
    """The config.yaml of the run that wrote `output_dir` (None when there is none)."""
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot read {path} (the config of the run being resumed): "
                          f"{' '.join(str(e).split())[:200]}; restore it, or set "
                          "resume.allow_changes=true to resume without comparing") from None
    return saved if isinstance(saved, Mapping) else None


def check_resume_config(cfg: TrainConfig, step: int) -> None:
    """Refuse to resume checkpoint `step` with a run-changing key changed (ConfigError)."""
    if cfg.resume.allow_changes:
        return
    saved = saved_config(cfg.output_dir)
    if saved is None:
        return
    changes = run_changes(saved, cfg)
    if changes:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:6])
        more = f" (and {len(changes) - 6} more)" if len(changes) > 6 else ""
        raise ConfigError(
            f"cannot resume {cfg.output_dir} (checkpoint {step}) with a changed config: "
            f"{listed}{more}; use the saved config ({cfg.output_dir}/config.yaml), another "
            "output_dir, or --set resume.allow_changes=true to continue with the new values")
