"""Pieces shared by the CLIP and Llama modules (the array ops shared with
`duet_jax.reduction` live in `duet_jax.ops`)."""
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


# A layer stack's params come in one of two forms:
# * stacked: one pytree whose leaves carry a leading [num_layers] axis (checkpoints,
#   training, sharding rules); the stack runs as one `lax.scan`;
# * unstacked: a tuple of per-layer pytrees (`unstack_layers`, for inference); the
#   stack runs as straight-line code reading every layer's weights in place. On
#   XLA:CPU the scan body is markedly slower for mid-size sequences (~150-600 rows,
#   the reduced segments), so inference containers keep their layers unstacked.

def slice_layers(layers, lo: int, hi: int):
    """Layers `lo..hi-1` (static bounds) of stacked or unstacked layer params."""
    if isinstance(layers, tuple):
        return layers[lo:hi]
    return jax.tree.map(lambda a: a[lo:hi], layers)


def layer_at(layers, index: int):
    """One layer's params out of stacked or unstacked layer params."""
    if isinstance(layers, tuple):
        return layers[index]
    return jax.tree.map(lambda a: a[index], layers)


def unstack_layers(stacked: dict, *, donate: bool = False) -> tuple:
    """Stacked layer params -> tuple of per-layer pytrees.

    The per-layer leaves are copies. With `donate=True` each stacked device array
    is deleted as soon as it has been split, so the peak is the stack plus one
    leaf instead of two stacks; the caller must not touch `stacked` afterwards.
    """
    leaves, treedef = jax.tree.flatten(stacked)
    num_layers = leaves[0].shape[0]
    split = []
    for leaf in leaves:
        parts = [leaf[i] for i in range(num_layers)]
        if donate and isinstance(leaf, jax.Array):
            jax.block_until_ready(parts)
            leaf.delete()
        split.append(parts)
    del leaves
    return tuple(jax.tree.unflatten(treedef, [parts[i] for parts in split])
                 for i in range(num_layers))


def run_stack(body, carry, layers, xs=(), *, stack: bool = True):
    """`lax.scan(body, carry, (layers, *xs))` for stacked layers; for a tuple the same
    loop unrolled, with each layer's entry `x[i]` of `xs` (stacked arrays or per-layer
    tuples) and the outputs stacked like scan's, or with `stack=False` kept as
    per-layer tuples (each output leaf a tuple of the layers' values)."""
    if not isinstance(layers, tuple):
        return jax.lax.scan(body, carry, (layers, *xs) if xs else layers)
    outs = []
    for i, p in enumerate(layers):
        carry, out = body(carry, (p, *(x[i] for x in xs)) if xs else p)
        outs.append(out)
    combine = (lambda *o: jnp.stack(o)) if stack else (lambda *o: o)
    return carry, jax.tree.map(combine, *outs) if outs else None

