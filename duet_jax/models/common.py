"""Pieces shared by the CLIP and Llama modules."""
from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def init_stacked(layer, rng: jax.Array, num_layers: int, example, param_dtype, **kwargs) -> dict:
    """Initialises `num_layers` copies of a linen layer as one stacked pytree.

    Returns the `params` collection with a leading `[num_layers]` axis on every leaf.
    """
    keys = jax.random.split(rng, num_layers)
    init = lambda k: layer.init(k, example, **kwargs)["params"]
    params = jax.vmap(init)(keys)
    return jax.tree.map(lambda a: a.astype(param_dtype), params)


def slice_layers(stacked: dict, lo: int, hi: int) -> dict:
    """Layers `lo..hi-1` of a stacked params pytree (static bounds)."""
    return jax.tree.map(lambda a: a[lo:hi], stacked)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """HF LlamaRMSNorm: float32 statistics, cast back, then times the weight."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * y.astype(x.dtype)
