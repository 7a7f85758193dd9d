"""Qwen2.5-VL checkpoints: the family's table of `duet_jax.checkpoints.plan`.

Rows name a pytree path, its PyTorch name under the component root and the
tensor's kind (`LINEAR` for every projection, the fused `qkv` included; the
Conv3d patch embedding is `Flatten`: [D, C, T, p, p] <-> [C*T*p*p, D]).
Reading accepts the hub layout (`visual.*`, `model.*`, `lm_head.weight`, what
`save_pretrained` writes) and the transformers-5 module names (`model.visual.*`,
`model.language_model.*`); export writes the hub layout. Layer leaves (`{i}`)
are stacked on a leading axis.
"""
from __future__ import annotations

import functools
import json
import os

from duet_jax.checkpoints.orbax_io import (flatten_tree, is_converted, read_converted,
                                           restore_params)
from duet_jax.checkpoints.plan import (Family, Flatten, Layout, Rows, Rule, export_entries,
                                       parse_config, read_params)
from duet_jax.checkpoints.reader import (CheckpointError, check_dir, find_weight_files, read_json,
                                         write_safetensors)
from duet_jax.models.qwen25vl import Qwen25VLConfig

FORMAT = "duet_jax.qwen2_5_vl"


@functools.lru_cache(maxsize=None)
def _table(patch_tail: tuple) -> tuple:
    """Every row of the model; `patch_tail` = (C, T, p, p) of the Conv3d patch embedding."""
    t = Rows()
    add, linear = t.add, t.linear
    add("vision/patch_embed/kernel", "vision", "patch_embed.proj.weight", Flatten("patch", patch_tail))
    for n in ("norm1", "norm2"):
        add(f"vision/layers/{n}/scale", "vision", f"blocks.{{i}}.{n}.weight")
    linear("vision/layers/attn/qkv", "vision", "blocks.{i}.attn.qkv")
    linear("vision/layers/attn/proj", "vision", "blocks.{i}.attn.proj")
    for n in ("gate_proj", "up_proj", "down_proj"):
        linear(f"vision/layers/mlp/{n}", "vision", f"blocks.{{i}}.mlp.{n}")
    add("vision/merger/ln_q/scale", "vision", "merger.ln_q.weight")
    linear("vision/merger/mlp_0", "vision", "merger.mlp.0")
    linear("vision/merger/mlp_2", "vision", "merger.mlp.2")
    add("text/embed_tokens/embedding", "text", "embed_tokens.weight")
    for n in ("q_proj", "k_proj", "v_proj"):
        linear(f"text/layers/self_attn/{n}", "text", f"layers.{{i}}.self_attn.{n}")
    linear("text/layers/self_attn/o_proj", "text", "layers.{i}.self_attn.o_proj", bias=False)
    for n in ("gate_proj", "up_proj", "down_proj"):
        linear(f"text/layers/mlp/{n}", "text", f"layers.{{i}}.mlp.{n}", bias=False)
    for n in ("input_layernorm", "post_attention_layernorm"):
        add(f"text/layers/{n}/scale", "text", f"layers.{{i}}.{n}.weight")
    add("text/norm/scale", "text", "norm.weight")
    linear("text/lm_head", "head", "lm_head", bias=False)   # absent with tied embeddings
    return tuple(t.rows)


@functools.lru_cache(maxsize=None)
def _layout(patch_tail: tuple) -> Layout:
    return Layout("qwen2_5_vl", (
        Rule("vision", r"(?:model\.)?visual\.", "visual."),
        Rule("text", r"model\.(?:language_model\.)?", "model."),
        Rule("head", r"", ""),
    ), _table(patch_tail), (("vision", r"rotary_pos_emb\.inv_freq"),
                            ("text", r"(?:layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")))


def layout(cfg: Qwen25VLConfig) -> Layout:
    v = cfg.vision
    return _layout((v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size))


def leaf_shapes(cfg: Qwen25VLConfig) -> dict:
    """{Entry: full pytree shape (stacked leaves include [num_layers])} for this config."""
    v, t = cfg.vision, cfg.text
    dv, iv, dt, it = v.hidden_size, v.intermediate_size, t.hidden_size, t.intermediate_size
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    merged = dv * v.merge_unit
    per_layer = {   # (component, module name) -> per-layer kernel / scale shape
        "vision": {"norm1": (dv,), "norm2": (dv,), "qkv": (dv, 3 * dv), "proj": (dv, dv),
                   "gate_proj": (dv, iv), "up_proj": (dv, iv), "down_proj": (iv, dv)},
        "text": {"input_layernorm": (dt,), "post_attention_layernorm": (dt,), "q_proj": (dt, q),
                 "k_proj": (dt, kv), "v_proj": (dt, kv), "o_proj": (q, dt), "gate_proj": (dt, it),
                 "up_proj": (dt, it), "down_proj": (it, dt)},
    }
    flat = {"patch_embed": (v.patch_dim, dv), "ln_q": (dv,), "mlp_0": (merged, merged),
            "mlp_2": (merged, v.out_hidden_size), "embed_tokens": (t.vocab_size, dt),
            "norm": (dt,), "lm_head": (dt, t.vocab_size)}
    depth = {"vision": v.depth, "text": t.num_hidden_layers}
    shapes = {}
    for e in layout(cfg).table:
        if e.component == "head" and t.tie_word_embeddings:
            continue
        module = e.path[-2]
        if e.stacked:
            full = per_layer[e.path[0]][module]
            shapes[e] = (depth[e.path[0]],) + (full[-1:] if e.path[-1] == "bias" else full)
        else:
            full = flat[module]
            shapes[e] = full[-1:] if e.path[-1] == "bias" else full
    return shapes


config_from_hf = functools.partial(parse_config, Qwen25VLConfig)


def qwen_config(path: str) -> Qwen25VLConfig:
    """The Qwen25VLConfig of an HF or converted directory's config.json."""
    return config_from_hf(read_json(os.path.join(path, "config.json")))


def _describe(keys) -> str:
    modern = any(k.startswith(("model.visual.", "model.language_model.")) for k in keys)
    return ("Qwen2.5-VL HF (model.visual.*, model.language_model.*)" if modern
            else "Qwen2.5-VL HF (visual.*, model.*)")


FAMILY = Family("Qwen2.5-VL", FORMAT, ("qwen2_5_vl",), layout=layout, config=config_from_hf,
                shapes=leaf_shapes, resolve=dict, describe=_describe)


def load_qwen_params(path: str, dtype=None):
    """An HF Qwen2.5-VL dir or its `python -m convert` output -> (Qwen25VLConfig, params).

    Layers are stacked. From an HF dir the leaves are NumPy (the stored dtype,
    or `dtype`); from a converted dir they are jax arrays on the default device.
    """
    path = os.fspath(path)
    check_dir(path)
    if is_converted(path):
        _, hf_config, params_dir = read_converted(path, (FORMAT,))
        return config_from_hf(hf_config), restore_params(params_dir, dtype=dtype)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json")
    plan = FAMILY.plan(path, find_weight_files(path), read_json(os.path.join(path, "config.json")))
    return plan.config, read_params(plan, dtype, progress=False)


def export_qwen(cfg: Qwen25VLConfig, params, out_dir: str) -> None:
    """Writes `config.json` + `model.safetensors` in the hub layout (HF-loadable)."""
    import numpy as np

    os.makedirs(out_dir, exist_ok=True)
    flat = {p: np.asarray(v) for p, v in flatten_tree(params).items()}
    write_safetensors(os.path.join(out_dir, "model.safetensors"),
                      export_entries(flat, layout(cfg), out_dir, FAMILY.name))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=2)
