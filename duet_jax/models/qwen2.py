"""Qwen2.5-VL language model (HF `Qwen2_5_VLTextModel` + `lm_head`) with M-RoPE.

The decoder is Llama's (RMSNorm, SwiGLU, GQA, rotate-half RoPE) with biases on
q/k/v (none on o) and multimodal RoPE: positions are `[3, B, L]` (temporal,
height, width ids) and the rotary frequencies are split into `mrope_section`
chunks, chunk i taking its angles from axis `i % 3`. Text tokens carry three
equal ids, where M-RoPE equals plain RoPE, so 2-D positions `[B, L]` (decode
steps) use the plain tables. Everything else (`run_layers`, `decode_layers`,
`head`, `embed`) is `LlamaModel`'s.

Params: the Llama layout of `duet_jax.models.config` with `self_attn/{q,k,v}_proj/bias`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.llama import (PARAM_AXES as _LLAMA_AXES, LlamaAttention, LlamaDecoderLayer,
                                   LlamaModel)
from duet_jax.models.rope import rope_parameters
from duet_jax.ops import apply_rope, rms_norm, rope_cos_sin
from duet_jax.reduction.stage2 import query_window, scores_from_qk, take_rows


def mrope_cos_sin(positions: jax.Array, inv_freq, section: tuple, dtype) -> tuple:
    """positions [3, B, L] -> cos, sin [B, L, hd] (HF `Qwen2_5_VLRotaryEmbedding`)."""
    if sum(section) != len(inv_freq):
        raise ValueError(f"mrope_section {list(section)} sums to {sum(section)}, but the head "
                         f"dim needs {len(inv_freq)} frequencies; fix rope_parameters")
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)   # [3, B, L, hd/2]
    bounds = np.cumsum((0,) + tuple(section))
    chunks = [freqs[i % 3, ..., lo:hi] for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
    emb = jnp.concatenate(chunks, axis=-1)
    emb = jnp.concatenate([emb, emb], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class Qwen2Attention(LlamaAttention):
    """Llama attention with q/k/v biases and a bias-free o_proj."""

    def use_bias(self, name: str) -> bool:
        return name != "o_proj"


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen2Attention


@dataclasses.dataclass(frozen=True)
class Qwen2Model(LlamaModel):
    """`LlamaModel` with Qwen2 layers and M-RoPE; `mrope_section` from rope_parameters."""
    mrope_section: tuple = (16, 24, 24)

    def _layer(self):
        return Qwen2DecoderLayer(self.config, self.dtype)

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """positions [3, B, L] (M-RoPE) or [B, L] (text-only: all axes equal)."""
        inv, scaling = rope_parameters(self.config)
        if scaling != 1.0 or self.config.rope_params.get("rope_type", "default") != "default":
            raise ValueError("Qwen2.5-VL M-RoPE supports rope_type 'default' only")
        if positions.ndim == 2:
            return rope_cos_sin(positions, jnp.asarray(inv), 1.0, self.dtype)
        return mrope_cos_sin(positions, inv, self.mrope_section, self.dtype)

    def stage2_scores(self, layer_params: dict, hidden, positions, valid, query_mask, image_start,
                      *, num_image: int, query_rows=None) -> jax.Array:
        """Stage-2 scoring hook (docs/ALGORITHM.md §3.2, §3.10): the next layer's biased q/k
        with M-RoPE on hidden [B, L, D] at positions [3, B, L] -> [B, num_image] float32
        (GQA, causal + padding mask, float32 softmax: `scores_from_qk`)."""
        cfg = self.config
        b, length = hidden.shape[:2]
        rows, row_ok = query_window(image_start, num_image, b, length, query_rows)
        attn = layer_params["self_attn"]
        x = rms_norm(jax.lax.stop_gradient(hidden), layer_params["input_layernorm"]["scale"],
                     cfg.rms_norm_eps)
        proj = lambda x, p: x @ p["kernel"].astype(x.dtype) + p["bias"].astype(x.dtype)
        cos, sin = self.rope(positions)
        q = proj(take_rows(x, rows), attn["q_proj"]).reshape(b, rows.shape[1], -1, cfg.head_dim)
        k = proj(x, attn["k_proj"]).reshape(b, length, -1, cfg.head_dim)
        return scores_from_qk(apply_rope(q, take_rows(cos, rows), take_rows(sin, rows)),
                              apply_rope(k, cos, sin), rows, row_ok, valid, query_mask,
                              image_start, num_image=num_image)

# Logical axes (`duet_jax.sharding`): Llama's layout, whose table already covers the
# q/k/v biases (heads / kv_heads, split with their kernels' outputs).
PARAM_AXES = dict(_LLAMA_AXES)
