"""LLaVA-1.5 / LLaVA-NeXT checkpoint layouts: the table of `duet_jax.checkpoints.plan`.

`TABLE` is the single source of truth for both directions. Each row names a
pytree leaf (layout in `duet_jax.models.config`), the PyTorch name under its
component root, and the transform between the two (`plan.Kind`). A `{i}` in
the name means the leaf is stacked on a leading `[num_layers]` axis. The
mechanism (parsing, checks, streaming) is `plan`'s; this module only declares.

Component roots differ per layout (`Rule`). Reading accepts every prefix
variant that transformers 5's `LlavaForConditionalGeneration.from_pretrained`
accepts (its conversion mapping renames `^language_model`, `^vision_tower`,
`^multi_modal_projector` under `model.`, drops `language_model.` before
`lm_head`, and the CLIPVisionModel mapping drops `vision_model.`):

    vision     (model.)?vision_tower.(vision_model.)?...
    text       (model.)?language_model.(model.)?...
    head       (language_model.)?lm_head.weight
    projector  (model.)?multi_modal_projector....

Export writes the hub llava-hf names (`language_model.model.*`,
`language_model.lm_head.weight`, `vision_tower.vision_model.*`,
`multi_modal_projector.*`), which transformers 4.x and 5.x both load.
"""
from __future__ import annotations

from typing import Optional

from duet_jax.checkpoints import plan
from duet_jax.checkpoints.plan import (CONV, COPY, IGNORED, LINEAR, Entry, Kind, Layout, Rows,
                                       Rule, parse_key)
from duet_jax.checkpoints.reader import CheckpointError
from duet_jax.models.config import LlavaConfig

__all__ = ["CLIP", "CONV", "COPY", "HF", "IGNORED", "LINEAR", "ORIGINAL", "TABLE", "Entry", "Kind",
           "Layout", "Rule", "detect_layout", "hf_variant", "leaf_shapes", "original_hf_config",
           "parse_key", "to_pytree", "to_torch", "tokenizer_image_id", "torch_name", "torch_shape"]


def _build_table() -> tuple:
    t = Rows()
    add, linear, norm = t.add, t.linear, t.norm
    add("vision/embeddings/class_embedding", "vision", "embeddings.class_embedding")
    add("vision/embeddings/patch_embedding/kernel", "vision", "embeddings.patch_embedding.weight", CONV)
    add("vision/embeddings/position_embedding/embedding", "vision", "embeddings.position_embedding.weight")
    norm("vision/pre_layrnorm", "vision", "pre_layrnorm")
    for n in ("layer_norm1", "layer_norm2"):
        norm(f"vision/layers/{n}", "vision", f"encoder.layers.{{i}}.{n}")
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        linear(f"vision/layers/self_attn/{n}", "vision", f"encoder.layers.{{i}}.self_attn.{n}")
    for n in ("fc1", "fc2"):
        linear(f"vision/layers/mlp/{n}", "vision", f"encoder.layers.{{i}}.mlp.{n}")
    norm("vision/post_layernorm", "vision", "post_layernorm")
    for n in ("linear_1", "linear_2"):
        linear(f"projector/{n}", "projector", n)
    add("text/embed_tokens/embedding", "text", "embed_tokens.weight")
    for n in ("input_layernorm", "post_attention_layernorm"):
        norm(f"text/layers/{n}", "text", f"layers.{{i}}.{n}", bias=False)
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        linear(f"text/layers/self_attn/{n}", "text", f"layers.{{i}}.self_attn.{n}")
    for n in ("gate_proj", "up_proj", "down_proj"):
        linear(f"text/layers/mlp/{n}", "text", f"layers.{{i}}.mlp.{n}")
    norm("text/norm", "text", "norm", bias=False)
    linear("text/lm_head", "head", "lm_head", bias=False)
    add("image_newline", "newline", "image_newline")    # LLaVA-NeXT only
    return tuple(t.rows)


TABLE = _build_table()
# Buffers some checkpoints carry that are recomputed, never learned.
IGNORED_BUFFERS = (("vision", r"embeddings\.position_ids"),
                   ("text", r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"))

HF = Layout("hf", (
    Rule("vision", r"(?:model\.)?vision_tower\.(?:vision_model\.)?", "vision_tower.vision_model."),
    Rule("text", r"(?:model\.)?language_model\.(?:model\.)?", "language_model.model."),
    Rule("head", r"(?:language_model\.)?", "language_model."),
    Rule("projector", r"(?:model\.)?multi_modal_projector\.", "multi_modal_projector."),
    Rule("newline", r"(?:model\.)?", ""),      # LLaVA-NeXT's image_newline [Dt]
), TABLE, IGNORED_BUFFERS)
ORIGINAL = Layout("original", (
    Rule("text", r"model\.", "model."),
    Rule("head", r"", ""),
    Rule("projector", r"model\.mm_projector\.", "model.mm_projector.",
         (("linear_1.", "0."), ("linear_2.", "2."))),
    Rule("vision", r"model\.vision_tower\.vision_tower\.vision_model\.",
         "model.vision_tower.vision_tower.vision_model."),
), TABLE, IGNORED_BUFFERS)
CLIP = Layout("clip", (Rule("vision", r"(?:vision_model\.)?", "vision_model."),), TABLE,
              IGNORED_BUFFERS)


def torch_name(entry: Entry, layer: Optional[int], layout: Layout = HF) -> str:
    """The PyTorch key of `entry` (layer `layer`) in `layout`'s canonical naming (hub llava-hf)."""
    return plan.torch_name(entry, layer, layout)


def to_pytree(arr, kind: Kind):
    """One PyTorch tensor (one layer) -> our leaf layout."""
    return kind.to_tree(arr)


def to_torch(arr, kind: Kind):
    """One leaf (one layer) of ours -> the PyTorch tensor layout."""
    return kind.to_torch(arr)


def torch_shape(shape: tuple, kind: Kind) -> tuple:
    """Per-layer pytree shape -> the PyTorch tensor shape."""
    return kind.torch_shape(shape)


def leaf_shapes(cfg: LlavaConfig) -> dict:
    """{Entry: full pytree shape (stacked leaves include [num_layers])} for this config."""
    v, t = cfg.vision, cfg.text
    dv, iv, p, c = v.hidden_size, v.intermediate_size, v.patch_size, v.num_channels
    dt, it, hd = t.hidden_size, t.intermediate_size, t.head_dim
    q, kv = t.num_attention_heads * hd, t.num_key_value_heads * hd
    per_layer = {   # (component, last name parts) -> per-layer shape
        "vision": {"layer_norm1": (dv,), "layer_norm2": (dv,), "q_proj": (dv, dv), "k_proj": (dv, dv),
                   "v_proj": (dv, dv), "out_proj": (dv, dv), "fc1": (dv, iv), "fc2": (iv, dv)},
        "text": {"input_layernorm": (dt,), "post_attention_layernorm": (dt,), "q_proj": (dt, q),
                 "k_proj": (dt, kv), "v_proj": (dt, kv), "o_proj": (q, dt), "gate_proj": (dt, it),
                 "up_proj": (dt, it), "down_proj": (it, dt)},
    }
    flat = {
        ("vision", "embeddings", "class_embedding"): (dv,),
        ("vision", "embeddings", "patch_embedding", "kernel"): (p, p, c, dv),
        ("vision", "embeddings", "position_embedding", "embedding"): (v.num_patches + 1, dv),
        ("vision", "pre_layrnorm"): (dv,), ("vision", "post_layernorm"): (dv,),
        ("projector", "linear_1"): (dv, dt), ("projector", "linear_2"): (dt, dt),
        ("text", "embed_tokens", "embedding"): (t.vocab_size, dt),
        ("text", "norm"): (dt,), ("text", "lm_head"): (dt, t.vocab_size),
        ("image_newline",): (dt,),
    }
    num_layers = {"vision": v.num_hidden_layers, "text": t.num_hidden_layers}
    shapes = {}
    for e in TABLE:
        if not _active(e, cfg):
            continue
        if e.stacked:
            full = per_layer[e.path[0]][e.path[-2]]
            full = (num_layers[e.path[0]],) + (full[-1:] if e.path[-1] == "bias" else full)
        else:
            key = e.path if e.path in flat else e.path[:-1]
            full = flat[key]
            full = full[-1:] if e.path[-1] == "bias" else full
        shapes[e] = full
    return shapes


def _active(e: Entry, cfg: LlavaConfig) -> bool:
    """Whether this config has the leaf (optional biases, untied lm_head)."""
    t = cfg.text
    if e.component == "newline":
        return hasattr(cfg, "image_grid_pinpoints")
    if e.component == "head":
        return not t.tie_word_embeddings
    if e.path[-1] != "bias":
        return True
    if e.component == "projector":
        return cfg.multimodal_projector_bias
    if e.path[:3] == ("text", "layers", "self_attn"):
        return t.attention_bias
    if e.path[:3] == ("text", "layers", "mlp"):
        return t.mlp_bias
    return True


def detect_layout(keys, config: dict) -> Layout:
    """HF (any from_pretrained prefix variant) or original LLaVA, from the keys and config.json."""
    keys = list(keys)
    hits = {lay.name: sum(isinstance(parse_key(k, lay), tuple) for k in keys) for lay in (HF, ORIGINAL)}
    model_type = config.get("model_type")
    if not any(hits.values()):
        sample = ", ".join(repr(k) for k in sorted(keys)[:3]) or "no keys at all"
        raise CheckpointError(
            f"unknown checkpoint layout (keys like {sample}); expected llava-hf "
            "(model.language_model.*), legacy HF (language_model.model.*) or original LLaVA "
            "(model.layers.*, model.mm_projector.*)")
    layout = HF if hits["hf"] >= hits["original"] else ORIGINAL
    if model_type in ("llava", "llava_next") and layout is ORIGINAL:
        raise CheckpointError("config.json says model_type 'llava' but the weights use the "
                                    "original LLaVA layout (model.layers.*); fix config.json")
    if layout is HF and model_type not in ("llava", "llava_next", None):
        raise CheckpointError(f"the weights use the HF llava layout but config.json has "
                                    f"model_type {model_type!r}; expected 'llava' or 'llava_next'")
    return layout


def hf_variant(keys) -> str:
    """'llava-hf (transformers 5)' or 'legacy HF' naming, for messages only."""
    modern = any(k.startswith(("model.language_model.", "model.vision_tower.")) for k in keys)
    return "llava-hf (model.*)" if modern else "legacy HF (language_model.model.*)"



# Keys of an original LLaVA config.json that describe the multimodal wrapper, not the Llama LM.
_LLAVA_ONLY = {"image_aspect_ratio", "image_grid_pinpoints", "tune_mm_mlp_adapter",
               "freeze_mm_mlp_adapter", "tokenizer_model_max_length", "tokenizer_padding_side",
               "use_mm_proj", "unfreeze_mm_vision_tower", "freeze_backbone", "architectures",
               "_name_or_path", "transformers_version"}


def original_hf_config(orig: dict, clip: dict, image_token_index: int) -> dict:
    """An HF `LlavaConfig` dict for an original LLaVA config.json plus its CLIP config.json.

    The projector must be LLaVA-1.5's `mlp2x_gelu` (= llava-hf's linear_1, GELU,
    linear_2). `mm_vision_select_feature` "patch" drops CLS ("default"),
    "cls_patch" keeps it ("full"). `image_seq_length` is left to the caller.
    """
    projector = orig.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise CheckpointError(f"original LLaVA mm_projector_type={projector!r} is not supported; "
                              "only mlp2x_gelu (LLaVA-1.5) maps onto the llava-hf projector")
    if str(orig.get("mm_patch_merge_type", "flat")).startswith("spatial") or \
            orig.get("image_aspect_ratio") == "anyres":
        raise CheckpointError("this is a LLaVA-NeXT (anyres) checkpoint; only LLaVA-1.5 is supported")
    feature = orig.get("mm_vision_select_feature", "patch")
    strategy = {"patch": "default", "cls_patch": "full"}.get(feature)
    if strategy is None:
        raise CheckpointError(f"mm_vision_select_feature={feature!r} is not supported; "
                              "expected 'patch' or 'cls_patch'")
    clip_type = clip.get("model_type")
    if clip_type == "clip":
        vision = dict(clip.get("vision_config") or {})
    elif clip_type == "clip_vision_model":
        vision = dict(clip)
    else:
        raise CheckpointError(f"the vision tower config has model_type {clip_type!r}; pass a "
                              "CLIPVisionModel or CLIPModel directory with --vision-tower")
    vision.update(model_type="clip_vision_model")
    for k in ("architectures", "_name_or_path", "transformers_version"):
        vision.pop(k, None)
    mm_hidden = orig.get("mm_hidden_size")
    if mm_hidden is not None and "hidden_size" in vision and mm_hidden != vision["hidden_size"]:
        raise CheckpointError(f"mm_hidden_size={mm_hidden} but the CLIP tower has hidden_size="
                              f"{vision['hidden_size']}; --vision-tower names the wrong CLIP model")
    text = {k: v for k, v in orig.items() if not k.startswith("mm_") and k not in _LLAVA_ONLY}
    text.update(model_type="llama", architectures=["LlamaForCausalLM"])
    dtype = orig.get("dtype", orig.get("torch_dtype"))
    return {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "image_token_index": image_token_index,
            "projector_hidden_act": "gelu", "multimodal_projector_bias": True,
            "vision_feature_layer": orig.get("mm_vision_select_layer", -1),
            "vision_feature_select_strategy": strategy,
            "tie_word_embeddings": bool(orig.get("tie_word_embeddings", False)),
            **({"dtype": dtype} if dtype else {})}


def tokenizer_image_id(directory: str) -> Optional[int]:
    """Id of an `<image>` token in the tokenizer files of `directory`, or None."""
    import json
    import os

    def load(name):
        try:
            with open(os.path.join(directory, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    tok = load("tokenizer.json") or {}
    for t in tok.get("added_tokens") or []:
        if t.get("content") == "<image>":
            return int(t["id"])
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and "<image>" in vocab:
        return int(vocab["<image>"])
    for idx, t in ((load("tokenizer_config.json") or {}).get("added_tokens_decoder") or {}).items():
        if isinstance(t, dict) and t.get("content") == "<image>":
            return int(idx)
    added = load("added_tokens.json") or {}
    return int(added["<image>"]) if "<image>" in added else None
