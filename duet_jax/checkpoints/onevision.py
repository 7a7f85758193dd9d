"""LLaVA-OneVision checkpoints: the family's table of `duet_jax.checkpoints.plan`.

The component roots are LLaVA's (`layouts.HF` rules: every prefix variant
transformers reads, hub llava-hf names on export); the rows differ: a SigLIP
tower (patch-embedding bias, no CLS row, no pre-layernorm), a Qwen2 LM (q/k/v
biases, none on o_proj), the projector and `image_newline`, and the tower is
written under `vision_tower.` (what transformers 5 saves). SigLIP's
attention-pooling head (`vision_tower.head.*`, built when `vision_use_head`)
is never read by LLaVA-OneVision, which takes a hidden state: it is skipped on
read, and the config written says `vision_use_head: false`.
"""
from __future__ import annotations

import dataclasses
from functools import partial

from duet_jax.checkpoints import layouts
from duet_jax.checkpoints.plan import Family, Layout, Rows, parse_config, with_hf_defaults
from duet_jax.models.onevision_layout import OnevisionConfig

FORMAT = "duet_jax.llava_onevision"
MODEL_TYPES = ("llava_onevision",)


def _build_table() -> tuple:
    """LLaVA's rows (`layouts.TABLE`: same module names) without CLIP's CLS row and
    pre-layernorm, plus SigLIP's patch-embedding bias. Which biases a config has is
    `leaf_shapes`' business (Qwen2: q/k/v, not o_proj, not the MLP)."""
    clip_only = {("vision", "embeddings", "class_embedding"), ("vision", "pre_layrnorm", "scale"),
                 ("vision", "pre_layrnorm", "bias")}
    t = Rows()
    t.add("vision/embeddings/patch_embedding/bias", "vision", "embeddings.patch_embedding.bias")
    return tuple(e for e in layouts.TABLE if e.path not in clip_only) + tuple(t.rows)


TABLE = _build_table()
# LLaVA's rules; the tower is written as transformers 5 saves a SiglipVisionModel tower
# (`vision_tower.*`, no `vision_model.`), so an HF -> duet_jax -> HF round trip keeps every name
HF = Layout("onevision", tuple(
    dataclasses.replace(r, canonical="vision_tower.") if r.component == "vision" else r
    for r in layouts.HF.rules), TABLE, layouts.IGNORED_BUFFERS + (("vision", r"head\..*"),))


def leaf_shapes(cfg: OnevisionConfig) -> dict:
    """{Entry: full pytree shape (stacked leaves include [num_layers])} for this config."""
    v, t = cfg.vision, cfg.text
    dv, iv, dt, it = v.hidden_size, v.intermediate_size, t.hidden_size, t.intermediate_size
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    per_layer = {
        "vision": {"layer_norm1": (dv,), "layer_norm2": (dv,), "q_proj": (dv, dv), "k_proj": (dv, dv),
                   "v_proj": (dv, dv), "out_proj": (dv, dv), "fc1": (dv, iv), "fc2": (iv, dv)},
        "text": {"input_layernorm": (dt,), "post_attention_layernorm": (dt,), "q_proj": (dt, q),
                 "k_proj": (dt, kv), "v_proj": (dt, kv), "o_proj": (q, dt), "gate_proj": (dt, it),
                 "up_proj": (dt, it), "down_proj": (it, dt)},
    }
    flat = {"patch_embedding": (v.patch_size, v.patch_size, v.num_channels, dv),
            "position_embedding": (v.num_patches, dv), "post_layernorm": (dv,),
            "linear_1": (dv, dt), "linear_2": (dt, dt), "embed_tokens": (t.vocab_size, dt),
            "norm": (dt,), "lm_head": (dt, t.vocab_size), "image_newline": (dt,)}
    depth = {"vision": v.num_hidden_layers, "text": t.num_hidden_layers}
    shapes = {}
    for e in TABLE:
        if (e.component == "head" and t.tie_word_embeddings) or (
                e.component in ("projector", "text") and e.path[-1] == "bias"
                and not _has_bias(e, cfg)):
            continue
        if e.stacked:
            full = per_layer[e.path[0]][e.path[-2]]
            shapes[e] = (depth[e.path[0]],) + (full[-1:] if e.path[-1] == "bias" else full)
        else:
            full = flat[e.path[-2] if len(e.path) > 1 else e.path[0]]
            shapes[e] = full[-1:] if e.path[-1] == "bias" else full
    return shapes


def _has_bias(e, cfg: OnevisionConfig) -> bool:
    if e.component == "projector":
        return cfg.multimodal_projector_bias
    return e.path[-2] in ("q_proj", "k_proj", "v_proj")      # Qwen2's only biases


def resolve_hf_config(d: dict) -> dict:
    """config.json as transformers' `LlavaOnevisionConfig` completes it; the pooling head off."""
    from transformers import LlavaOnevisionConfig
    out = with_hf_defaults(LlavaOnevisionConfig, d, "LLaVA-OneVision")
    out["vision_config"] = dict(out["vision_config"], vision_use_head=False)
    return out


FAMILY = Family("LLaVA-OneVision", FORMAT, MODEL_TYPES, layout=lambda cfg: HF,
                config=partial(parse_config, OnevisionConfig), shapes=leaf_shapes,
                resolve=resolve_hf_config, describe=layouts.hf_variant)
