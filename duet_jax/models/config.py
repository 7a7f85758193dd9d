"""Typed model configs, built from HF `config.json` dicts.

Parameter pytree layout (plain nested dicts of arrays; the converter and the
modules agree on it; "stacked" means a leading `[num_layers]` axis):

    vision:                                    # CLIPVisionModel
      embeddings: class_embedding [D]
                  patch_embedding/kernel [p, p, 3, D]    (HWIO)
                  position_embedding/embedding [T, D]
      pre_layrnorm/{scale, bias} [D]
      layers (stacked):
        layer_norm1/{scale, bias}, layer_norm2/{scale, bias}
        self_attn/{q_proj, k_proj, v_proj, out_proj}/{kernel [D, D], bias [D]}
        mlp/{fc1, fc2}/{kernel [in, out], bias [out]}
      post_layernorm/{scale, bias}
    projector: linear_1/{kernel, bias}, linear_2/{kernel, bias}
    text:                                      # LlamaForCausalLM
      embed_tokens/embedding [V, D]
      layers (stacked):
        input_layernorm/scale, post_attention_layernorm/scale
        self_attn/{q_proj, k_proj, v_proj, o_proj}/kernel (+ bias if attention_bias)
        mlp/{gate_proj, up_proj, down_proj}/kernel (+ bias if mlp_bias)
      norm/scale
      lm_head/kernel [D, V]                    (absent when tie_word_embeddings)

Kernels are `[in, out]` (y = x @ kernel), i.e. the transpose of torch's Linear.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional


def _pick(d: Mapping[str, Any], cls, **override):
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    kw.update(override)
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Defaults are the CLIP ViT-L/14-336 tower HF `LlavaConfig` assumes; partial hub
    configs are completed by `duet_jax.checkpoints` through transformers first."""
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 336
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "VisionConfig":
        return _pick(d, cls)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """HF `CLIPTextConfig` (defaults: openai/clip-vit-large-patch14-336's text tower) plus
    the checkpoint's `projection_dim`; CDPruner reads it (docs/BASELINES.md §4)."""
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    projection_dim: int = 768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], projection_dim: int) -> "CLIPTextConfig":
        return _pick(d, cls, projection_dim=projection_dim)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Defaults are HF `LlamaConfig`'s."""
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None     # None: = num_attention_heads
    head_dim: Optional[int] = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[tuple] = None    # sorted (key, value) pairs: hashable for jit
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; fix the text config")

    @property
    def rope_params(self) -> dict:
        return dict(self.rope_scaling or ())

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "TextConfig":
        d = dict(d)
        # transformers 5 keeps theta and scaling in `rope_parameters`.
        rp = d.get("rope_parameters") or {}
        if rp:
            d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
            if rp.get("rope_type", "default") != "default":
                d["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        rs = d.get("rope_scaling")
        if rs and rs.get("rope_type", rs.get("type", "default")) == "default":
            d["rope_scaling"] = None
        eos = d.get("eos_token_id")
        if isinstance(eos, (list, tuple)):
            d["eos_token_id"] = int(eos[0])
        return _pick(d, cls)


def _freeze(m: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in m.items()))


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    image_token_index: int = 32000
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"   # "default" drops CLS, "full" keeps it
    multimodal_projector_bias: bool = True
    image_seq_length: int = 576

    def __post_init__(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}; "
                "use 'default' or 'full'")
        if isinstance(self.vision_feature_layer, (list, tuple)):
            raise ValueError("a list vision_feature_layer is not supported; use one int layer index")

    @property
    def feature_layer_index(self) -> int:
        """0-based index of the CLIP encoder layer whose output feeds the projector."""
        n = self.vision.num_hidden_layers
        # HF hidden_states has n+1 entries (embeddings first); layer i output = hidden_states[i+1].
        # HF indexes a list of n+1 entries: -(n+1)..n exist; Python's % would wrap the rest
        idx = self.vision_feature_layer % (n + 1) - 1
        if not 0 <= idx < n or not -(n + 1) <= self.vision_feature_layer <= n:
            raise ValueError(f"vision_feature_layer={self.vision_feature_layer} is out of range "
                             f"for a {n}-layer vision tower")
        return idx

    @property
    def num_image_tokens(self) -> int:
        n = self.vision.num_patches
        return n if self.vision_feature_select_strategy == "default" else n + 1

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "LlavaConfig":
        vision = VisionConfig.from_hf(d.get("vision_config") or {})
        text = TextConfig.from_hf(d.get("text_config") or {})
        d = dict(d)
        d.pop("vision_config", None)
        d.pop("text_config", None)
        if "image_token_id" in d and "image_token_index" not in d:
            d["image_token_index"] = d["image_token_id"]
        return _pick(d, cls, vision=vision, text=text)

    def to_hf(self) -> dict:
        """The HF `LlavaConfig` dict this config came from (enough for from_pretrained)."""
        text = dataclasses.asdict(self.text)
        text["rope_scaling"] = dict(self.text.rope_scaling) if self.text.rope_scaling else None
        text["model_type"] = "llama"
        vision = dataclasses.asdict(self.vision)
        vision["model_type"] = "clip_vision_model"
        top = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("vision", "text")}
        return dict(top, model_type="llava", architectures=["LlavaForConditionalGeneration"],
                    vision_config=vision, text_config=text,
                    tie_word_embeddings=self.text.tie_word_embeddings)
