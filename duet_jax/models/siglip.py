"""SigLIP vision tower with the semantics of HF `SiglipVisionModel` (LLaVA-OneVision's tower).

The encoder layer is CLIP's (pre-norm attention + MLP, q/k/v/out biases; the
activation, `gelu_pytorch_tanh`, comes from the config), so this module only
changes what differs around it: the patch embedding has a bias, the learned
position table has one row per patch and **no CLS row**, there is no
pre-layernorm, and the attention-pooling head is never built (LLaVA-OneVision
reads a hidden state, `vision_feature_layer`, not the pooled output). Layers,
the probe and `stop_after` are `CLIPVisionTower.apply`'s; the probe's
`cls_attn` (row 0's attention) means nothing here: CLS-free Stage 1 reads the
full map (`probe_full_attn=True`, docs/ALGORITHM.md §2.6).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from duet_jax.models.clip import (PARAM_AXES as CLIP_PARAM_AXES, CLIPVisionTower, VisionOutput,
                                  _layer_norm)
from duet_jax.models.common import init_stacked


@dataclasses.dataclass(frozen=True)
class SiglipVisionTower(CLIPVisionTower):
    """Pure SigLIP vision tower: `tower.apply(params, pixel_values, ...)` -> hidden [B, N, D]."""

    def init(self, rng: jax.Array) -> dict:
        cfg = self.config
        k_patch, k_pos, k_layers = jax.random.split(rng, 3)
        d, p = cfg.hidden_size, cfg.patch_size
        normal = lambda k, shape: (0.02 * jax.random.normal(k, shape)).astype(self.param_dtype)
        x = jnp.zeros((1, cfg.num_patches, d), self.dtype)
        return {
            "embeddings": {
                "patch_embedding": {"kernel": normal(k_patch, (p, p, cfg.num_channels, d)),
                                    "bias": jnp.zeros((d,), self.param_dtype)},
                "position_embedding": {"embedding": normal(k_pos, (cfg.num_patches, d))},
            },
            "layers": init_stacked(self._layer(), k_layers, cfg.num_hidden_layers, x,
                                   self.param_dtype),
            "post_layernorm": {"scale": jnp.ones((d,), self.param_dtype),
                               "bias": jnp.zeros((d,), self.param_dtype)},
        }

    def embed(self, params: dict, pixel_values: jax.Array) -> jax.Array:
        """[B, 3, H, W] (PyTorch layout) -> [B, N, D]: conv patches + bias + positions."""
        emb = params["embeddings"]
        patches = self.patches(emb["patch_embedding"], pixel_values)
        return patches + emb["position_embedding"]["embedding"].astype(self.dtype)[None]

    def apply(self, params: dict, pixel_values: jax.Array, *, stop_after: Optional[int] = None,
              probe_layer: Optional[int] = None, probe_full_attn: bool = False,
              output_hidden_states: bool = False) -> VisionOutput:
        """As `CLIPVisionTower.apply`; `pooled` is HF's `last_hidden_state` (post_layernorm
        of every row, [B, N, D]) for a full run, else None."""
        out = super().apply(params, pixel_values, stop_after=stop_after, probe_layer=probe_layer,
                            probe_full_attn=probe_full_attn,
                            output_hidden_states=output_hidden_states)
        if out.pooled is None:
            return out
        return out._replace(pooled=_layer_norm(out.hidden, params["post_layernorm"],
                                               self.config.layer_norm_eps))


# Logical axes (`duet_jax.sharding`): CLIP's table without the CLS row and pre-layernorm,
# plus the patch-embedding bias (split with the kernel's output, "embed").
PARAM_AXES = {
    **{k: v for k, v in CLIP_PARAM_AXES.items()
       if k[0] != "pre_layrnorm" and k != ("embeddings", "class_embedding")},
    ("embeddings", "patch_embedding", "bias"): ("embed",),
}
