"""Qwen2.5-VL checkpoints: HF PyTorch layout <-> our param pytree (both directions).

`TABLE` rows name a pytree path, its PyTorch name under the component root and
the transform. Reading accepts the hub layout (`visual.*`, `model.*`,
`lm_head.weight`, what `save_pretrained` writes) and the transformers-5 module
names (`model.visual.*`, `model.language_model.*`); export writes the hub
layout. Layer leaves (`{i}`) are stacked on a leading axis.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from duet_jax.checkpoints.reader import (CheckpointError, find_weight_files, iter_bin,
                                         iter_safetensors, write_safetensors)
from duet_jax.models.qwen25vl import Qwen25VLConfig

COPY, LINEAR, PATCH = "copy", "linear", "patch"   # PATCH: Conv3d [D,C,T,p,p] <-> [C*T*p*p, D]


def _table(cfg: Qwen25VLConfig) -> list:
    rows = []

    def linear(path, comp, name, bias=True):
        rows.append((f"{path}/kernel", comp, f"{name}.weight", LINEAR))
        if bias:
            rows.append((f"{path}/bias", comp, f"{name}.bias", COPY))

    rows.append(("vision/patch_embed/kernel", "vision", "patch_embed.proj.weight", PATCH))
    for n in ("norm1", "norm2"):
        rows.append((f"vision/layers/{n}/scale", "vision", f"blocks.{{i}}.{n}.weight", COPY))
    linear("vision/layers/attn/qkv", "vision", "blocks.{i}.attn.qkv")
    linear("vision/layers/attn/proj", "vision", "blocks.{i}.attn.proj")
    for n in ("gate_proj", "up_proj", "down_proj"):
        linear(f"vision/layers/mlp/{n}", "vision", f"blocks.{{i}}.mlp.{n}")
    rows.append(("vision/merger/ln_q/scale", "vision", "merger.ln_q.weight", COPY))
    linear("vision/merger/mlp_0", "vision", "merger.mlp.0")
    linear("vision/merger/mlp_2", "vision", "merger.mlp.2")
    rows.append(("text/embed_tokens/embedding", "text", "embed_tokens.weight", COPY))
    for n in ("q_proj", "k_proj", "v_proj"):
        linear(f"text/layers/self_attn/{n}", "text", f"layers.{{i}}.self_attn.{n}")
    linear("text/layers/self_attn/o_proj", "text", "layers.{i}.self_attn.o_proj", bias=False)
    for n in ("gate_proj", "up_proj", "down_proj"):
        linear(f"text/layers/mlp/{n}", "text", f"layers.{{i}}.mlp.{n}", bias=False)
    for n in ("input_layernorm", "post_attention_layernorm"):
        rows.append((f"text/layers/{n}/scale", "text", f"layers.{{i}}.{n}.weight", COPY))
    rows.append(("text/norm/scale", "text", "norm.weight", COPY))
    if not cfg.text.tie_word_embeddings:
        rows.append(("text/lm_head/kernel", "head", "lm_head.weight", LINEAR))
    return rows


_ROOTS = {"vision": (r"(?:model\.)?visual\.", "visual."),
          "text": (r"model\.(?:language_model\.)?", "model."),
          "head": (r"", "")}
_LAYER = re.compile(r"^(blocks|layers)\.(\d+)\.")


def _depth(cfg, comp):
    return cfg.vision.depth if comp == "vision" else cfg.text.num_hidden_layers


def qwen_config(path: str) -> Qwen25VLConfig:
    with open(os.path.join(path, "config.json")) as f:
        return Qwen25VLConfig.from_hf(json.load(f))


def _to_tree(arr, kind):
    if kind == LINEAR:
        return arr.T
    if kind == PATCH:
        return arr.reshape(arr.shape[0], -1).T
    return arr


def _to_torch(arr, kind, cfg):
    if kind == LINEAR:
        return np.ascontiguousarray(arr.T)
    if kind == PATCH:
        v = cfg.vision
        return np.ascontiguousarray(arr.T).reshape(
            v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return arr


def _match(key: str, by_name: dict):
    """key -> (row, layer or None), or None for an unknown key."""
    if key == "lm_head.weight":
        return by_name.get(("head", key)), None
    for comp in ("vision", "text"):
        m = re.match(_ROOTS[comp][0], key)
        if not m or (comp == "text" and key.startswith(("model.visual.", "visual."))):
            continue
        rest = key[m.end():]
        lm = _LAYER.match(rest)
        layer = None
        if lm:
            layer = int(lm.group(2))
            rest = f"{lm.group(1)}.{{i}}." + rest[lm.end():]
        row = by_name.get((comp, rest))
        if row is not None:
            return row, layer
    return None, None


def load_qwen_params(path: str, dtype=None):
    """HF Qwen2.5-VL directory -> (Qwen25VLConfig, params with stacked layers, NumPy)."""
    cfg = qwen_config(path)
    table = _table(cfg)
    by_name = {(comp, name): (p, comp, name, kind) for p, comp, name, kind in table}
    weights = find_weight_files(path)
    leaves, seen = {}, set()
    for file in weights.files:
        infos = [weights.tensors[k] for k in weights.keys_in(file)]
        items = iter_safetensors(file, infos) if weights.kind == "safetensors" else iter_bin(file)
        for key, arr in items:
            row, layer = _match(key, by_name)
            if row is None:
                if "rotary" in key or "inv_freq" in key:
                    continue
                raise CheckpointError(f"{path}: unexpected weight {key!r}; is this a Qwen2.5-VL "
                                      "ForConditionalGeneration checkpoint?")
            p, comp, name, kind = row
            value = _to_tree(np.asarray(arr), kind)
            if dtype is not None:
                value = value.astype(dtype)
            if layer is None:
                leaves[p] = value
            else:
                leaves.setdefault(p, [None] * _depth(cfg, comp))[layer] = value
            seen.add((p, layer))
    params = {}
    for p, comp, name, kind in table:
        if p not in leaves:
            raise CheckpointError(f"{path}: weight {_ROOTS[comp][1]}{name} is missing")
        value = leaves[p]
        if isinstance(value, list):
            if any(v is None for v in value):
                raise CheckpointError(f"{path}: layer {value.index(None)} of {name} is missing")
            value = np.stack(value)
        node = params
        *parents, last = p.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return cfg, params


def export_qwen(cfg: Qwen25VLConfig, params, out_dir: str) -> None:
    """Writes `config.json` + `model.safetensors` in the hub layout (HF-loadable)."""
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for p, comp, name, kind in _table(cfg):
        node = params
        for k in p.split("/"):
            node = node[k]
        arr = np.asarray(node)
        layers = range(arr.shape[0]) if "{i}" in name else [None]
        for i in layers:
            value = _to_torch(arr if i is None else arr[i], kind, cfg)
            key = _ROOTS[comp][1] + (name if i is None else name.replace("{i}", str(i)))
            entries.append((key, value.shape, value.dtype, lambda v=value: v))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), entries)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=2)
