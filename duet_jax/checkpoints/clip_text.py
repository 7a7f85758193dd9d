"""CLIP text tower + `visual_projection` out of an HF `CLIPModel` directory (such as
openai/clip-vit-large-patch14-336): what CDPruner reads besides the LLaVA checkpoint
(docs/BASELINES.md §4, §9). A table for the one plan mechanism (`plan.map_keys`,
`plan.read_params`); the directory's vision tower is not read (LLaVA brings its own).

Pytree (duet_jax.models.clip_text): `clip_text/...` (the tower) and `clip_projection/kernel`.
"""
from __future__ import annotations

import os

from duet_jax.checkpoints.plan import (Layout, Plan, Rows, Rule, check_complete, map_keys,
                                       read_params, with_hf_defaults)
from duet_jax.checkpoints.reader import (CheckpointError, check_dir, find_weight_files,
                                         read_json)
from duet_jax.models.config import CLIPTextConfig


def _build_table() -> tuple:
    r = Rows()
    r.add("clip_text/embeddings/token_embedding/embedding", "text", "embeddings.token_embedding.weight")
    r.add("clip_text/embeddings/position_embedding/embedding", "text",
          "embeddings.position_embedding.weight")
    for n in ("layer_norm1", "layer_norm2"):
        r.norm(f"clip_text/layers/{n}", "text", f"encoder.layers.{{i}}.{n}")
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        r.linear(f"clip_text/layers/self_attn/{n}", "text", f"encoder.layers.{{i}}.self_attn.{n}")
    for n in ("fc1", "fc2"):
        r.linear(f"clip_text/layers/mlp/{n}", "text", f"encoder.layers.{{i}}.mlp.{n}")
    r.norm("clip_text/final_layer_norm", "text", "final_layer_norm")
    r.linear("clip_text/text_projection", "projection", "text_projection", bias=False)
    r.linear("clip_projection", "projection", "visual_projection", bias=False)
    return tuple(r.rows)


TABLE = _build_table()
LAYOUT = Layout("clip_model", (Rule("text", r"text_model\.", "text_model."),
                               Rule("projection", r"", "")), TABLE,
                ignored=(("text", r"embeddings\.position_ids"), ("projection", r"logit_scale")))


def clip_text_config(raw: dict, path: str) -> CLIPTextConfig:
    """A `CLIPModel` config.json dict -> `CLIPTextConfig` (transformers completes it)."""
    if raw.get("model_type") != "clip":
        raise CheckpointError(f"{path} holds model_type {raw.get('model_type')!r}, not a CLIP "
                              "model with a text tower; pass an HF CLIPModel directory such as "
                              "openai/clip-vit-large-patch14-336")
    from transformers import CLIPConfig
    full = with_hf_defaults(CLIPConfig, raw, "CLIP")
    return CLIPTextConfig.from_hf(full["text_config"], projection_dim=full["projection_dim"])


def leaf_shapes(cfg: CLIPTextConfig, vision_hidden: int) -> dict:
    d, f, p, n = cfg.hidden_size, cfg.intermediate_size, cfg.projection_dim, cfg.num_hidden_layers
    sizes = {"embeddings/token_embedding": (cfg.vocab_size, d),
             "embeddings/position_embedding": (cfg.max_position_embeddings, d),
             "fc1/kernel": (d, f), "fc1/bias": (f,), "fc2/kernel": (f, d), "text_projection": (d, p)}
    out = {}
    for e in TABLE:
        path = "/".join(e.path)
        if e.path[0] == "clip_projection":
            shape = (vision_hidden, p)
        else:
            shape = next((s for k, s in sizes.items() if k in path),
                         (d, d) if path.endswith("kernel") else (d,))
        out[e] = (n,) + shape if e.stacked else shape
    return out


def is_clip_text_dir(path: str) -> bool:
    """True where `path` holds a `CLIPModel` config (the auto-detected `clip_text_tower/`)."""
    cfg = os.path.join(path, "config.json")
    return os.path.isfile(cfg) and read_json(cfg).get("model_type") == "clip"


def plan_clip_text(path: str, vision_hidden: int) -> Plan:
    """Plan the text tower and visual projection of the CLIPModel dir `path`
    (`vision_hidden`: the LLaVA tower's width, which the projection must take)."""
    check_dir(path)
    raw = read_json(os.path.join(path, "config.json")) if os.path.isfile(
        os.path.join(path, "config.json")) else {}
    cfg = clip_text_config(raw, path)
    shapes = leaf_shapes(cfg, vision_hidden)
    weights = find_weight_files(path)
    keep = lambda k: not k.startswith("vision_model.")
    src = map_keys(weights, LAYOUT, shapes, {}, "CLIP text tower", keep)
    check_complete([src], shapes, lambda e: LAYOUT, path)
    return Plan(raw, cfg, "HF CLIPModel (text_model.*, text/visual_projection)", [src], shapes,
                [(path, None)])


def load_clip_text(path: str, vision_hidden: int, dtype=None):
    """-> (CLIPTextConfig, {"clip_text": tower params, "clip_projection": {"kernel"}})."""
    plan = plan_clip_text(path, vision_hidden)
    return plan.config, read_params(plan, dtype, progress=False)
