"""Logical axes -> mesh axes: the one rules table, and the placement of a model's params.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with params,
grads and optimizer state sharded), `tensor` (Megatron-style: attention heads,
MLP hidden units and the vocabulary split).

Which logical axes a parameter has is declared by its model, next to the modules
that own it: a `PARAM_AXES` table per model file (`duet_jax.models.clip`, `.llama`,
`.qwen2`, `.qwen_vision`, and the assemblies `.llava`, `.llava_next`,
`.video_llava`, `.qwen25vl`), mapping each param path (stacked layers included) to
one logical name (or None: replicated) per dimension. This module imports no model:
callers pass the table. Nothing is guessed: a leaf the table does not name, a
logical name the rules do not know, a mesh axis used twice in one parameter, or a
dimension its mesh axes do not divide is a one-line ValueError naming the parameter.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None: replicated). The only place where this mapping lives.
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

AxesTable = Mapping[tuple, tuple]     # param path -> one logical name (or None) per dimension


def _path_names(path) -> tuple:
    """A `tree_map_with_path` key path -> (names, number of tuple indices dropped).

    Unstacked layers (a tuple of per-layer trees, `duet_jax.models.common.unstack_layers`)
    put an index into the path; it is dropped, and with it the table's leading "layers" axis.
    """
    names, dropped = [], 0
    for k in path:
        if isinstance(k, jax.tree_util.SequenceKey):
            dropped += 1
        else:
            names.append(str(getattr(k, "key", getattr(k, "name", k))))
    return tuple(names), dropped


def _show(names: Sequence[str]) -> str:
    return "/".join(names)


def logical_axes(path: Sequence[str], ndim: int, table: AxesTable) -> tuple:
    """Logical axis names of the leaf at `path` (a tuple of names) from a model's table."""
    path = tuple(path)
    if path not in table:
        raise ValueError(f"parameter {_show(path)} has no entry in the model's PARAM_AXES table; "
                         "declare its logical axes next to the module that owns it")
    axes = tuple(table[path])
    if len(axes) != ndim:
        raise ValueError(f"parameter {_show(path)} has {ndim} dimensions but PARAM_AXES gives "
                         f"{len(axes)} axes {axes}; fix its table entry")
    return axes


def _mesh_text(mesh: Mesh) -> str:
    return "mesh(" + ", ".join(f"{a}={n}" for a, n in mesh.shape.items()) + ")"


def spec_for(name: str, axes: tuple, shape: tuple, mesh: Mesh,
             rules: Mapping = DEFAULT_RULES) -> P:
    """The PartitionSpec of one parameter (`name` for messages), or a one-line ValueError."""
    out, used = [], {}
    for dim, (ax, size) in enumerate(zip(axes, shape)):
        if ax is not None and ax not in rules:
            raise ValueError(f"parameter {name} {list(shape)}: logical axis {ax!r} is not in the "
                             f"sharding rules ({sorted(rules)}); add it to the rules or fix "
                             "PARAM_AXES")
        mesh_axes = tuple(a for a in (rules.get(ax) or ()) if a in mesh.shape) if ax else ()
        for a in mesh_axes:
            if a in used:
                raise ValueError(
                    f"parameter {name} {list(shape)} on {_mesh_text(mesh)}: logical axes "
                    f"{used[a]!r} and {ax!r} both map to mesh axis {a!r}; map them to different "
                    "mesh axes in the rules")
            used[a] = ax
        parts = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
        if size % parts:
            fix = " x ".join(mesh_axes)
            raise ValueError(
                f"parameter {name} {list(shape)} on {_mesh_text(mesh)}: dimension {dim} ({size}, "
                f"{ax!r}) is not divisible by its mesh axes {fix} ({parts}); use a smaller {fix} "
                f"axis that divides {size}")
        out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return P(*out)


def param_shardings(params, mesh: Mesh, axes_table: AxesTable, rules: Mapping = DEFAULT_RULES):
    """A pytree of `NamedSharding` matching `params` (arrays or ShapeDtypeStructs, stacked or
    unstacked layers), from the model's `PARAM_AXES` table and the logical -> mesh rules."""
    def one(path, leaf):
        names, dropped = _path_names(path)
        axes = logical_axes(names, leaf.ndim + dropped, axes_table)
        if dropped:
            if axes[:dropped] != ("layers",) * dropped:
                raise ValueError(f"parameter {_show(names)} sits in a tuple of layers but its "
                                 f"PARAM_AXES entry {axes} has no leading 'layers' axis")
            axes = axes[dropped:]
        return NamedSharding(mesh, spec_for(_show(names), axes, tuple(leaf.shape), mesh, rules))
    return jax.tree_util.tree_map_with_path(one, params)


def place_on_mesh(params, mesh: Mesh, axes_table: AxesTable, rules: Mapping = DEFAULT_RULES):
    """`params` (host or device arrays) placed on `mesh` by `param_shardings`."""
    return jax.device_put(params, param_shardings(params, mesh, axes_table, rules))


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
