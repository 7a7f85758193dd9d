"""CLIP text tower (HF `CLIPTextModelWithProjection`) and CLIP's `visual_projection`:
the two CLIP parts CDPruner reads besides the LLaVA tower (docs/BASELINES.md §4).

The layers are the vision tower's `CLIPEncoderLayer` (one implementation), run
with a causal-and-padding mask. Params (kernels `[in, out]`):

    clip_text:
      embeddings: token_embedding/embedding [V, D], position_embedding/embedding [77, D]
      layers (stacked): as the vision tower's
      final_layer_norm/{scale, bias} [D]
      text_projection/kernel [D, P]
    visual_projection/kernel [Dv, P]           (the LLaVA params' `clip_projection`)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from duet_jax.models.clip import PARAM_AXES as CLIP_PARAM_AXES, CLIPEncoderLayer, _layer_norm
from duet_jax.models.common import init_stacked, run_stack
from duet_jax.models.config import CLIPTextConfig


@dataclasses.dataclass(frozen=True)
class CLIPTextTower:
    """Pure CLIP text tower: `tower.apply(params, input_ids, attention_mask)` -> text_embeds."""
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _layer(self):
        return CLIPEncoderLayer(self.config, self.dtype)

    def init(self, rng: jax.Array) -> dict:
        cfg = self.config
        k_tok, k_pos, k_layers, k_proj = jax.random.split(rng, 4)
        d, t = cfg.hidden_size, cfg.max_position_embeddings
        normal = lambda k, shape: (0.02 * jax.random.normal(k, shape)).astype(self.param_dtype)
        x = jnp.zeros((1, t, d), self.dtype)
        return {
            "embeddings": {"token_embedding": {"embedding": normal(k_tok, (cfg.vocab_size, d))},
                           "position_embedding": {"embedding": normal(k_pos, (t, d))}},
            "layers": init_stacked(self._layer(), k_layers, cfg.num_hidden_layers, x,
                                   self.param_dtype),
            "final_layer_norm": {"scale": jnp.ones((d,), self.param_dtype),
                                 "bias": jnp.zeros((d,), self.param_dtype)},
            "text_projection": {"kernel": normal(k_proj, (d, cfg.projection_dim))},
        }

    def apply(self, params: dict, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids, attention_mask [S, T] (T <= 77) -> text_embeds [S, P] float32.

        Each row attends causally to its unmasked tokens; the pooled row is, as in
        HF, the first `eos_token_id` token, or the largest id where the config's
        `eos_token_id` is the legacy 2 (openai checkpoints: the EOS id is the largest).
        """
        cfg, emb = self.config, params["embeddings"]
        s, t = input_ids.shape
        x = jnp.take(emb["token_embedding"]["embedding"], input_ids, axis=0).astype(self.dtype)
        x = x + emb["position_embedding"]["embedding"][:t].astype(self.dtype)[None]
        keys = attention_mask.astype(bool)[:, None, None, :]                  # [S, 1, 1, T]
        mask = keys & jnp.tril(jnp.ones((t, t), bool))[None, None]           # [S, 1, T, T]
        layer = self._layer()

        def body(h, p):
            h, _ = layer.apply({"params": p}, h, mask=mask)
            return h, None

        x, _ = run_stack(body, x, params["layers"])
        x = _layer_norm(x, params["final_layer_norm"], cfg.layer_norm_eps)
        ids = input_ids.astype(jnp.int32)
        row = jnp.argmax(ids if cfg.eos_token_id == 2 else (ids == cfg.eos_token_id), axis=-1)
        pooled = x[jnp.arange(s), row].astype(jnp.float32)
        return pooled @ params["text_projection"]["kernel"].astype(jnp.float32)


def image_embeds(post_layernorm: dict, projection: dict, patches: jax.Array,
                 eps: float) -> jax.Array:
    """patches [B, N, Dv] (the LLaVA tower's selected layer) -> [B, N, P] float32:
    `visual_projection(post_layernorm(patches))`, as CDPruner computes them (docs/BASELINES.md §4)."""
    x = _layer_norm(patches.astype(jnp.float32), post_layernorm, eps)
    return x @ projection["kernel"].astype(jnp.float32)


# Logical axes (`duet_jax.sharding`): the layers share the vision tower's table; the
# tower is small and runs once per question, so embeddings and projections replicate.
PARAM_AXES = {
    ("embeddings", "token_embedding", "embedding"): (None, None),
    ("embeddings", "position_embedding", "embedding"): (None, None),
    ("final_layer_norm", "scale"): (None,),
    ("final_layer_norm", "bias"): (None,),
    ("text_projection", "kernel"): (None, None),
    **{path: axes for path, axes in CLIP_PARAM_AXES.items() if path[0] == "layers"},
}
PROJECTION_AXES = {("clip_projection", "kernel"): (None, None)}
