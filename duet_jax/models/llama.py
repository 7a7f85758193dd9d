"""Llama decoder with the semantics of HF `LlamaForCausalLM`.

RMSNorm, rotate-half RoPE (with HF's rope_scaling types), grouped-query
attention through `duet_jax.models.attention.attend` (fused kernels on GPU
builds, query blocks on CPU), SwiGLU MLP, optional tied embeddings. Layers are
stacked and run by `lax.scan` over any static slice `[lo, hi)`, so callers (LLaVA with Stage 2)
can change the sequence between slices.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from duet_jax.models.attention import attend
from duet_jax.models.common import ACTIVATIONS, init_stacked, run_stack, slice_layers
from duet_jax.models.config import TextConfig
from duet_jax.models.rope import inv_freq_for
from duet_jax.ops import apply_rope, rms_norm, rope_cos_sin
from duet_jax.reduction.stage2 import text_image_scores


class LlamaAttention(nn.Module):
    config: TextConfig
    dtype: jnp.dtype = jnp.float32

    def use_bias(self, name: str) -> bool:
        """Whether projection `name` has a bias (Llama: all four or none; Qwen2 overrides)."""
        return self.config.attention_bias

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None):
        """x [B, T, D]; mask [B, 1, T, S] bool; kv_cache (k, v) each [B, S, KV, hd].

        With a cache, the new keys/values are placed at `cache_index` and the
        queries attend over the whole cache (masked by `mask`).
        Returns (out [B, T, D], (k, v)): the keys/values of these T tokens, [B, T, KV, hd],
        or with a cache the updated cache, [B, S, KV, hd].
        """
        cfg = self.config
        b, t, _ = x.shape
        h, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        dense = lambda n, name: nn.Dense(n, use_bias=self.use_bias(name), dtype=self.dtype,
                                         name=name)
        q = apply_rope(dense(h * hd, "q_proj")(x).reshape(b, t, h, hd), cos, sin)
        k = apply_rope(dense(kv * hd, "k_proj")(x).reshape(b, t, kv, hd), cos, sin)
        v = dense(kv * hd, "v_proj")(x).reshape(b, t, kv, hd)
        if kv_cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(kv_cache[0], k.astype(kv_cache[0].dtype), cache_index, 1)
            v = jax.lax.dynamic_update_slice_in_dim(kv_cache[1], v.astype(kv_cache[1].dtype), cache_index, 1)
        new_kv = (k, v)
        # Without a cache this is a prefill whose mask is causal (run_layers' causal_mask).
        out = attend(q, k, v, mask, hd ** -0.5, causal=kv_cache is None)
        return dense(cfg.hidden_size, "o_proj")(out.reshape(b, t, h * hd)), new_kv


class LlamaMLP(nn.Module):
    config: TextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = lambda n, name: nn.Dense(n, use_bias=cfg.mlp_bias, dtype=self.dtype, name=name)
        act = ACTIVATIONS[cfg.hidden_act]
        gated = act(dense(cfg.intermediate_size, "gate_proj")(x)) * dense(cfg.intermediate_size, "up_proj")(x)
        return dense(cfg.hidden_size, "down_proj")(gated)


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        return rms_norm(x, self.param("scale", nn.initializers.ones, (x.shape[-1],)), self.eps)


class LlamaDecoderLayer(nn.Module):
    config: TextConfig
    dtype: jnp.dtype = jnp.float32
    attention_cls = LlamaAttention     # a class attribute: subclasses swap the attention only

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None):
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, name=name)
        attn, new_kv = self.attention_cls(cfg, self.dtype, name="self_attn")(
            norm("input_layernorm")(x), cos, sin, mask, kv_cache, cache_index)
        x = x + attn
        x = x + LlamaMLP(cfg, self.dtype, name="mlp")(norm("post_attention_layernorm")(x))
        return x, new_kv


def causal_mask(valid: jax.Array) -> jax.Array:
    """valid [B, L] -> [B, 1, L, L] bool: key <= query and key valid."""
    length = valid.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    return causal[None, None] & valid.astype(bool)[:, None, None, :]


@dataclasses.dataclass(frozen=True)
class LlamaModel:
    """Pure Llama LM: `model.apply(params, input_ids, attention_mask)`.

    `params` follows the layout in `duet_jax.models.config`; params are
    upcast/downcast to `dtype` inside the computation.
    """
    config: TextConfig
    dtype: jnp.dtype = jnp.float32          # compute dtype
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False                     # jax.checkpoint each layer (training)

    def _layer(self):
        return LlamaDecoderLayer(self.config, self.dtype)

    def init(self, rng: jax.Array) -> dict:
        cfg = self.config
        k_emb, k_layers, k_head = jax.random.split(rng, 3)
        d = cfg.hidden_size
        x = jnp.zeros((1, 2, d), self.dtype)
        cos = sin = jnp.zeros((1, 2, cfg.head_dim), self.dtype)
        mask = jnp.ones((1, 1, 2, 2), bool)
        normal = lambda k, shape: (0.02 * jax.random.normal(k, shape)).astype(self.param_dtype)
        params = {
            "embed_tokens": {"embedding": normal(k_emb, (cfg.vocab_size, d))},
            "layers": init_stacked(self._layer(), k_layers, cfg.num_hidden_layers, x,
                                   self.param_dtype, cos=cos, sin=sin, mask=mask),
            "norm": {"scale": jnp.ones((d,), self.param_dtype)},
        }
        if not cfg.tie_word_embeddings:
            params["lm_head"] = {"kernel": normal(k_head, (d, cfg.vocab_size))}
        return params

    def embed(self, params: dict, input_ids: jax.Array) -> jax.Array:
        """[B, L] int -> [B, L, D]; ids outside the vocab (placeholders) embed as row 0."""
        table = params["embed_tokens"]["embedding"]
        ids = jnp.where((input_ids >= 0) & (input_ids < table.shape[0]), input_ids, 0)
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        inv, scaling = inv_freq_for(self.config, positions)
        return rope_cos_sin(positions, inv, scaling, self.dtype)

    def run_layers(self, params: dict, h: jax.Array, positions: jax.Array, valid: jax.Array,
                   lo: int, hi: int, *, return_kv: bool = False):
        """Runs decoder layers `lo..hi-1` on h [B, L, D].

        positions [B, L] int (RoPE ids), valid [B, L] (1 = real token).
        Returns (h, kv) with kv = (k, v) each [hi-lo, B, L, KV, hd] if asked.
        """
        if hi <= lo:
            return h, None
        cos, sin = self.rope(positions)
        mask = causal_mask(valid)
        layer = self._layer()

        def body(x, p):
            x, kv = layer.apply({"params": p}, x, cos, sin, mask)
            return x, (kv if return_kv else None)

        if self.remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        h, kv = run_stack(body, h, slice_layers(params["layers"], lo, hi))
        return h, kv

    def decode_layers(self, params: dict, h: jax.Array, positions: jax.Array, cache_valid: jax.Array,
                      caches: tuple, cache_index: jax.Array, lo: int, hi: int, layers=None):
        """One cached step through layers `lo..hi-1`.

        h [B, T, D] new tokens, positions [B, T], cache_valid [B, S] (1 = slot holds a real
        key, the new slots included), caches (k, v) each [hi-lo, B, S, KV, hd], or each a
        tuple of hi-lo [B, S, KV, hd] (per-layer params; returned in the same form).
        `layers`: the already-sliced stacked params of `lo..hi-1` (slice once, outside a
        decode loop); default: sliced from `params` here.
        Returns (h, updated caches).
        """
        cos, sin = self.rope(positions)
        t, s = h.shape[1], cache_valid.shape[1]
        slot = jnp.arange(s)[None, None, :]
        query_slot = cache_index + jnp.arange(t)[None, :, None]
        mask = ((slot <= query_slot) & cache_valid.astype(bool)[:, None, :])[:, None]
        layer = self._layer()

        # Stacked: each layer's cache goes in as a scan input and comes out rewritten as a
        # scan output, one linear pass over the caches per step. (Carrying the stacked
        # caches and updating them in place made XLA:CPU copy the whole stack at every
        # layer, a cost quadratic in depth.) Per layer: each cache is its own buffer of
        # the decode loop's carry and only its new slots are written.
        def body(x, inputs):
            p, ck, cv = inputs
            x, (k, v) = layer.apply({"params": p}, x, cos, sin, mask, (ck, cv), cache_index)
            return x, (k, v)

        layers = slice_layers(params["layers"], lo, hi) if layers is None else layers
        h, (k_all, v_all) = run_stack(body, h, layers, caches,
                                      stack=not isinstance(caches[0], tuple))
        return h, (k_all, v_all)

    def stage2_scores(self, layer_params: dict, hidden, positions, valid, query_mask, image_start,
                      *, num_image: int, query_rows: Optional[int] = None) -> jax.Array:
        """Stage-2 scoring hook (docs/ALGORITHM.md §3.2): `text_image_scores` with the
        norm/q/k weights of `layer_params` on hidden [B, L, D] at positions [B, L]
        -> [B, num_image] float32. valid, query_mask [B, L]; image_start [B]."""
        cfg = self.config
        if cfg.attention_bias:
            raise ValueError("Stage 2 scoring assumes Llama q/k projections without bias; "
                             "this checkpoint has attention_bias=True")
        inv_freq, scaling = inv_freq_for(cfg, positions)
        attn = layer_params["self_attn"]
        return text_image_scores(
            hidden, layer_params["input_layernorm"]["scale"].astype(self.dtype),
            attn["q_proj"]["kernel"].astype(self.dtype), attn["k_proj"]["kernel"].astype(self.dtype),
            positions, valid, query_mask, image_start, num_image=num_image,
            num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
            rms_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, rope_inv_freq=inv_freq,
            rope_attention_scaling=scaling, query_rows=query_rows)

    def head(self, params: dict, h: jax.Array) -> jax.Array:
        """Final norm + LM head: [B, L, D] -> [B, L, V] float32."""
        h = rms_norm(h, params["norm"]["scale"], self.config.rms_norm_eps)
        if self.config.tie_word_embeddings:
            w = params["embed_tokens"]["embedding"].astype(self.dtype).T
        else:
            w = params["lm_head"]["kernel"].astype(self.dtype)
        return jnp.einsum("bld,dv->blv", h, w, preferred_element_type=jnp.float32)

    def apply(self, params: dict, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
              positions: Optional[jax.Array] = None, inputs_embeds: Optional[jax.Array] = None):
        """Logits [B, L, V] float32 of the unreduced LM (HF `LlamaForCausalLM` semantics)."""
        h = self.embed(params, input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        b, length = h.shape[:2]
        valid = jnp.ones((b, length), bool) if attention_mask is None else attention_mask.astype(bool)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (b, length))
        h, _ = self.run_layers(params, h, positions, valid, 0, self.config.num_hidden_layers)
        return self.head(params, h)


# Logical axes of every Llama param (`duet_jax.sharding`), paths relative to the LM;
# `layers` leaves carry the leading stacked axis. q/k/v, gate/up split their output,
# o/down their input (Megatron's column/row pairs); biases exist only with
# attention_bias / mlp_bias (Qwen2: q/k/v biases), lm_head only untied.
PARAM_AXES = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("norm", "scale"): (None,),
    ("lm_head", "kernel"): ("embed", "vocab"),
    ("layers", "input_layernorm", "scale"): ("layers", None),
    ("layers", "post_attention_layernorm", "scale"): ("layers", None),
    ("layers", "self_attn", "q_proj", "kernel"): ("layers", "embed", "heads"),
    ("layers", "self_attn", "q_proj", "bias"): ("layers", "heads"),
    **{("layers", "self_attn", proj, "kernel"): ("layers", "embed", "kv_heads")
       for proj in ("k_proj", "v_proj")},
    **{("layers", "self_attn", proj, "bias"): ("layers", "kv_heads")
       for proj in ("k_proj", "v_proj")},
    ("layers", "self_attn", "o_proj", "kernel"): ("layers", "heads", "embed"),
    ("layers", "self_attn", "o_proj", "bias"): ("layers", None),
    **{("layers", "mlp", proj, "kernel"): ("layers", "embed", "mlp")
       for proj in ("gate_proj", "up_proj")},
    **{("layers", "mlp", proj, "bias"): ("layers", "mlp") for proj in ("gate_proj", "up_proj")},
    ("layers", "mlp", "down_proj", "kernel"): ("layers", "mlp", "embed"),
    ("layers", "mlp", "down_proj", "bias"): ("layers", None),
}
