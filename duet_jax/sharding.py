"""Logical axis names for every parameter, and the one table mapping them to mesh axes.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with params,
grads and optimizer state sharded), `tensor` (Megatron-style: attention heads,
MLP hidden units and the vocabulary split). A dimension that its mesh axes do
not divide is replicated instead, so tiny test models shard on any mesh.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes. The only place where this mapping lives.
DEFAULT_RULES: Mapping[str, Optional[tuple]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "layers": None,
    "norm": None,
    "length": None,
}

# Dense layers by role: column-parallel ones split their output, row-parallel their input.
_COLUMN = {"q_proj": "heads", "k_proj": "kv_heads", "v_proj": "kv_heads", "gate_proj": "mlp",
           "up_proj": "mlp", "fc1": "mlp", "linear_1": "mlp"}
_ROW = {"o_proj": "heads", "out_proj": "heads", "down_proj": "mlp", "fc2": "mlp"}


def logical_axes(path: Sequence[str], ndim: int) -> tuple:
    """Logical axis names of one parameter leaf, from its path in the param pytree."""
    stacked = "layers" in path
    core_ndim = ndim - int(stacked)
    name, leaf = (path[-2] if len(path) > 1 else ""), path[-1]
    if leaf == "kernel" and name in _COLUMN:
        axes = ("embed", _COLUMN[name])
    elif leaf == "kernel" and name in _ROW:
        axes = (_ROW[name], "embed")
    elif leaf == "bias" and name in _COLUMN:
        axes = (_COLUMN[name],)
    elif name == "embed_tokens":
        axes = ("vocab", "embed")
    elif name == "lm_head":
        axes = ("embed", "vocab")
    elif name == "linear_2" and leaf == "kernel":
        axes = ("mlp", "embed")
    elif name == "patch_embedding":
        axes = (None, None, None, "embed")
    else:   # norms, biases of row-parallel layers, position/class embeddings
        axes = (None,) * core_ndim
    if len(axes) != core_ndim:
        axes = (None,) * core_ndim
    return (("layers",) if stacked else ()) + tuple(axes)


def _spec(axes: tuple, shape: tuple, mesh: Mesh, rules: Mapping) -> P:
    out, used = [], set()
    for ax, dim in zip(axes, shape):
        mesh_axes = tuple(a for a in (rules.get(ax) or ()) if a in mesh.shape and a not in used)
        size = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
        if mesh_axes and dim % size == 0:
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
            used.update(mesh_axes)
        else:
            out.append(None)
    return P(*out)


def param_shardings(params, mesh: Mesh, rules: Mapping = DEFAULT_RULES):
    """A pytree of `NamedSharding` matching `params` (arrays or ShapeDtypeStructs)."""
    def one(path, leaf):
        names = tuple(str(getattr(k, "key", k)) for k in path)
        return NamedSharding(mesh, _spec(logical_axes(names, leaf.ndim), leaf.shape, mesh, rules))
    return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, ndim: int, rules: Mapping = DEFAULT_RULES) -> NamedSharding:
    """Shards the leading (batch) axis over the data-parallel mesh axes."""
    axes = tuple(a for a in (rules.get("batch") or ()) if a in mesh.shape)
    return NamedSharding(mesh, P(axes if axes else None, *([None] * (ndim - 1))))


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A `(data, fsdp, tensor)` mesh; -1 in one axis takes the remaining devices."""
    devices = jax.devices() if devices is None else devices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if -1 in sizes:
        rest = int(np.prod([s for s in sizes if s != -1]))
        sizes[sizes.index(-1)] = len(devices) // rest
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                         f"{int(np.prod(sizes))} devices but {len(devices)} are available; "
                         "change the mesh sizes (one may be -1)")
    # Auto axes: XLA's partitioner propagates shardings through the model, so the
    # modules need no sharding annotations of their own.
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES))


def place_on_mesh(params, mesh: Mesh, rules: Mapping = DEFAULT_RULES):
    """`params` (host or device arrays) placed on `mesh` by `param_shardings`."""
    return jax.device_put(params, param_shardings(params, mesh, rules))
