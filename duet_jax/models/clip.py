"""CLIP vision tower with the semantics of HF `CLIPVisionModel`.

Pre-layernorm transformer, quick_gelu MLP, class + learned position
embeddings. Layers are stacked (`[num_layers, ...]` params) and run with
`lax.scan`; one chosen layer ("probe") additionally returns what Stage 1 of
DUET needs: the CLS query's attention to the patches and the head-mean of
its raw key states.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from duet_jax.models.attention import attend
from duet_jax.models.common import ACTIVATIONS, init_stacked, layer_at, run_stack, slice_layers
from duet_jax.models.config import VisionConfig


class ProbeOutput(NamedTuple):
    cls_attn: jax.Array    # [B, H, N]   CLS-query attention probabilities to the patch keys
    metric: jax.Array      # [B, N+1, Dh] head-mean of the raw key states (bias included)
    attn: Optional[jax.Array] = None   # [B, H, N+1, N+1] full map, only when asked


class CLIPAttention(nn.Module):
    config: VisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, probe: bool = False, full_attn: bool = False, mask=None):
        """x [B, T, D]; `mask` [B, 1, T, T] bool (True: may attend), e.g. the text tower's
        causal-and-padding mask (duet_jax.models.clip_text); None: full attention."""
        cfg = self.config
        b, t, _ = x.shape
        h, hd = cfg.num_attention_heads, cfg.head_dim
        dense = lambda name: nn.Dense(cfg.hidden_size, dtype=self.dtype, name=name)
        q = dense("q_proj")(x).reshape(b, t, h, hd)
        k = dense("k_proj")(x).reshape(b, t, h, hd)
        v = dense("v_proj")(x).reshape(b, t, h, hd)
        if probe:
            # Stage 1 reads probabilities, so this one layer computes them explicitly.
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            probs = jax.nn.softmax(logits * hd ** -0.5, axis=-1)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
            extra = ProbeOutput(cls_attn=probs[:, :, 0, 1:],
                                metric=k.astype(jnp.float32).mean(axis=2),
                                attn=probs if full_attn else None)
        else:
            out = attend(q, k, v, mask, hd ** -0.5, causal=False)
            extra = None
        out = dense("out_proj")(out.reshape(b, t, h * hd))
        return out, extra


class CLIPMLP(nn.Module):
    config: VisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = nn.Dense(cfg.intermediate_size, dtype=self.dtype, name="fc1")(x)
        x = ACTIVATIONS[cfg.hidden_act](x)
        return nn.Dense(cfg.hidden_size, dtype=self.dtype, name="fc2")(x)


class CLIPEncoderLayer(nn.Module):
    """One pre-LN CLIP layer, shared by the vision and text towers (`config` needs
    hidden_size, intermediate_size, num_attention_heads, head_dim, hidden_act, layer_norm_eps)."""
    config: VisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, probe: bool = False, full_attn: bool = False, mask=None):
        eps = self.config.layer_norm_eps
        ln = lambda name: nn.LayerNorm(epsilon=eps, dtype=self.dtype, name=name)
        attn_out, extra = CLIPAttention(self.config, self.dtype, name="self_attn")(
            ln("layer_norm1")(x), probe=probe, full_attn=full_attn, mask=mask)
        x = x + attn_out
        x = x + CLIPMLP(self.config, self.dtype, name="mlp")(ln("layer_norm2")(x))
        return x, extra


class VisionOutput(NamedTuple):
    hidden: jax.Array                 # [B, N+1, D] output of the last layer that ran
    hidden_states: Optional[tuple]    # embeddings output, then every layer's output
    probe: Optional[ProbeOutput]
    pooled: Optional[jax.Array]       # [B, D] post_layernorm(CLS), only for a full run


@dataclasses.dataclass(frozen=True)
class CLIPVisionTower:
    """Pure CLIP vision tower: `tower.apply(params, pixel_values, ...)`."""
    config: VisionConfig
    dtype: jnp.dtype = jnp.float32          # compute dtype
    param_dtype: jnp.dtype = jnp.float32

    def _layer(self):
        return CLIPEncoderLayer(self.config, self.dtype)

    def init(self, rng: jax.Array) -> dict:
        cfg = self.config
        k_cls, k_patch, k_pos, k_layers = jax.random.split(rng, 4)
        d, p = cfg.hidden_size, cfg.patch_size
        normal = lambda k, shape: (0.02 * jax.random.normal(k, shape)).astype(self.param_dtype)
        ln = lambda: {"scale": jnp.ones((d,), self.param_dtype), "bias": jnp.zeros((d,), self.param_dtype)}
        x = jnp.zeros((1, cfg.num_patches + 1, d), self.dtype)
        return {
            "embeddings": {
                "class_embedding": normal(k_cls, (d,)),
                "patch_embedding": {"kernel": normal(k_patch, (p, p, cfg.num_channels, d))},
                "position_embedding": {"embedding": normal(k_pos, (cfg.num_patches + 1, d))},
            },
            "pre_layrnorm": ln(),
            "layers": init_stacked(self._layer(), k_layers, cfg.num_hidden_layers, x,
                                   self.param_dtype),
            "post_layernorm": ln(),
        }

    def patches(self, patch_params: dict, pixel_values: jax.Array) -> jax.Array:
        """[B, 3, H, W] (PyTorch layout) -> [B, N, D]: the patch convolution (+ its bias
        where the tower has one, as SigLIP's does)."""
        cfg = self.config
        x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.dtype)   # NHWC
        kernel = patch_params["kernel"].astype(self.dtype)
        patches = jax.lax.conv_general_dilated(
            x, kernel, window_strides=(cfg.patch_size,) * 2, padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        patches = patches.reshape(patches.shape[0], -1, cfg.hidden_size)
        if patches.shape[1] != cfg.num_patches:
            raise ValueError(
                f"pixel_values {tuple(pixel_values.shape)} give {patches.shape[1]} patches but the "
                f"vision config expects {cfg.num_patches} ({cfg.image_size}px / {cfg.patch_size}); "
                "resize images with the checkpoint's image processor")
        if "bias" in patch_params:
            patches = patches + patch_params["bias"].astype(self.dtype)
        return patches

    def embed(self, params: dict, pixel_values: jax.Array) -> jax.Array:
        """[B, 3, H, W] (PyTorch layout) -> [B, N+1, D] after pre_layrnorm."""
        cfg, emb = self.config, params["embeddings"]
        patches = self.patches(emb["patch_embedding"], pixel_values)
        b = patches.shape[0]
        cls = jnp.broadcast_to(emb["class_embedding"].astype(self.dtype), (b, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)
        x = x + emb["position_embedding"]["embedding"].astype(self.dtype)[None]
        return _layer_norm(x, params["pre_layrnorm"], cfg.layer_norm_eps)

    def apply(self, params: dict, pixel_values: jax.Array, *, stop_after: Optional[int] = None,
              probe_layer: Optional[int] = None, probe_full_attn: bool = False,
              output_hidden_states: bool = False) -> VisionOutput:
        """Runs layers `0..stop_after` (inclusive; default: all of them).

        `probe_layer` (0-based, <= stop_after) also returns that layer's
        `ProbeOutput`; no other layer materialises attention probabilities. A tuple
        of increasing layers returns a tuple of `ProbeOutput`s (VScan reads two).
        """
        n = self.config.num_hidden_layers
        last = n - 1 if stop_after is None else stop_after
        probes = (() if probe_layer is None else
                  (probe_layer,) if isinstance(probe_layer, int) else tuple(probe_layer))
        if (not 0 <= last < n or any(not 0 <= p <= last for p in probes)
                or any(b <= a for a, b in zip(probes, probes[1:]))):
            raise ValueError(f"stop_after={stop_after}, probe_layer={probe_layer} do not fit "
                             f"a {n}-layer vision tower")
        x = self.embed(params, pixel_values)
        hidden_states = [x] if output_hidden_states else None
        layer = self._layer()

        def run(x, lo, hi):
            if hi <= lo:
                return x
            def body(h, p):
                h, _ = layer.apply({"params": p}, h)
                return h, (h if output_hidden_states else None)
            x, hs = run_stack(body, x, slice_layers(params["layers"], lo, hi))
            if output_hidden_states:
                hidden_states.extend(hs[i] for i in range(hi - lo))
            return x

        done, outs = 0, []
        for index in probes:
            x = run(x, done, index)
            p = layer_at(params["layers"], index)
            x, out = layer.apply({"params": p}, x, probe=True, full_attn=probe_full_attn)
            outs.append(out)
            if output_hidden_states:
                hidden_states.append(x)
            done = index + 1
        x = run(x, done, last + 1)
        probe = tuple(outs) if isinstance(probe_layer, (tuple, list)) else (outs[0] if outs else None)
        pooled = None
        if last == n - 1:
            pooled = _layer_norm(x[:, 0], params["post_layernorm"], self.config.layer_norm_eps)
        return VisionOutput(x, tuple(hidden_states) if output_hidden_states else None, probe, pooled)


def _layer_norm(x, p, eps):
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


# Logical axes of every CLIP tower param (`duet_jax.sharding`), paths relative to the
# tower; `layers` leaves carry the leading stacked axis. q/k/v split their output
# (heads) and out_proj its input: Megatron's column/row pairs, as are fc1/fc2.
PARAM_AXES = {
    ("embeddings", "class_embedding"): (None,),
    ("embeddings", "patch_embedding", "kernel"): (None, None, None, "embed"),
    ("embeddings", "position_embedding", "embedding"): (None, None),
    ("pre_layrnorm", "scale"): (None,),
    ("pre_layrnorm", "bias"): (None,),
    ("post_layernorm", "scale"): (None,),
    ("post_layernorm", "bias"): (None,),
    **{("layers", ln, leaf): ("layers", None)
       for ln in ("layer_norm1", "layer_norm2") for leaf in ("scale", "bias")},
    **{("layers", "self_attn", proj, "kernel"): ("layers", "embed", "heads")
       for proj in ("q_proj", "k_proj", "v_proj")},
    **{("layers", "self_attn", proj, "bias"): ("layers", "heads")
       for proj in ("q_proj", "k_proj", "v_proj")},
    ("layers", "self_attn", "out_proj", "kernel"): ("layers", "heads", "embed"),
    ("layers", "self_attn", "out_proj", "bias"): ("layers", None),
    ("layers", "mlp", "fc1", "kernel"): ("layers", "embed", "mlp"),
    ("layers", "mlp", "fc1", "bias"): ("layers", "mlp"),
    ("layers", "mlp", "fc2", "kernel"): ("layers", "mlp", "embed"),
    ("layers", "mlp", "fc2", "bias"): ("layers", None),
}
