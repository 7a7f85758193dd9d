"""The one conversion mechanism: a family's key table <-> our param pytree, both directions.

A family (LLaVA-1.5/NeXT in `layouts`/`llava`, Video-LLaVA in `video`,
Qwen2.5-VL in `qwen25vl`) declares only data: `Entry` rows (a pytree path, the
PyTorch name under a component root, the tensor's `Kind`), a `Layout` (where
each component lives: `Rule`s) and a `Family` (config parsing, leaf shapes).
Everything else is here and shared: parsing stored keys, checking a checkpoint
before any tensor data is read (unknown, duplicate and missing keys, shapes),
streaming tensors into the tree, and naming tensors for an export. Every
problem is one `CheckpointError` line that names the key.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Optional

import numpy as np

from duet_jax.checkpoints.orbax_io import cast_dtype, unflatten_tree
from duet_jax.checkpoints.reader import (CheckpointError, WeightFiles, iter_bin,
                                         iter_safetensors)


# ---- entry kinds: how one stored tensor (one layer) maps onto one leaf ----

@dataclasses.dataclass(frozen=True)
class Kind:
    """Identity: the leaf is the stored tensor."""
    name: str = "copy"

    def to_tree(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def to_torch(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def torch_shape(self, shape: tuple) -> tuple:
        """Per-layer pytree shape -> the stored tensor's shape."""
        return tuple(shape)


@dataclasses.dataclass(frozen=True)
class Transpose(Kind):
    """leaf = stored.transpose(axes): LINEAR ([out, in] <-> [in, out]), CONV (OIHW <-> HWIO)."""
    axes: tuple = (1, 0)

    def to_tree(self, arr):
        return arr.transpose(self.axes)

    def to_torch(self, arr):
        return arr.transpose(tuple(np.argsort(self.axes)))

    def torch_shape(self, shape):
        return tuple(shape[i] for i in np.argsort(self.axes))


@dataclasses.dataclass(frozen=True)
class Flatten(Kind):
    """Stored [D, *tail] (e.g. a Conv3d patch embedding) <-> leaf [prod(tail), D]."""
    tail: tuple = ()

    def to_tree(self, arr):
        return arr.reshape(arr.shape[0], -1).T

    def to_torch(self, arr):
        return arr.T.reshape((arr.shape[1],) + tuple(self.tail))

    def torch_shape(self, shape):
        return (shape[1],) + tuple(self.tail)


COPY = Kind()
LINEAR = Transpose("linear", (1, 0))
CONV = Transpose("conv", (2, 3, 1, 0))


# ---- tables and layouts ----

@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple        # pytree path, e.g. ("text", "layers", "mlp", "up_proj", "kernel")
    component: str     # e.g. "vision" | "text" | "head" | "projector"
    name: str          # PyTorch name under the component root; "{i}" = layer index
    kind: Kind = COPY

    @property
    def stacked(self) -> bool:
        return "{i}" in self.name


class Rows:
    """Builds a table: `add` one row; `linear` (kernel + optional bias) and `norm` (scale +
    optional bias) add a module's rows. Paths are "a/b/c"; names may hold "{i}"."""

    def __init__(self):
        self.rows = []

    def add(self, path: str, component: str, name: str, kind: Kind = COPY):
        self.rows.append(Entry(tuple(path.split("/")), component, name, kind))

    def linear(self, path: str, component: str, name: str, bias: bool = True):
        self.add(f"{path}/kernel", component, f"{name}.weight", LINEAR)
        if bias:
            self.add(f"{path}/bias", component, f"{name}.bias")

    def norm(self, path: str, component: str, name: str, bias: bool = True):
        self.add(f"{path}/scale", component, f"{name}.weight")
        if bias:
            self.add(f"{path}/bias", component, f"{name}.bias")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Where one component lives in a layout: a prefix regex to read, a canonical prefix to write."""
    component: str
    prefix: str
    canonical: str
    renames: tuple = ()     # (ours, theirs) replacements at the start of the remainder


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    rules: tuple            # tried in order; the first rule whose table has the name wins
    table: tuple            # Entry rows of this layout's model
    ignored: tuple = ()     # (component, regex): stored buffers that are recomputed, never learned

    @functools.cached_property
    def by_name(self) -> dict:
        return {(e.component, e.name): e for e in self.table}


IGNORED = "ignored"
_LAYER = re.compile(r"^((?:encoder\.)?(?:layers|blocks)\.)(\d+)\.")


def parse_key(key: str, layout: Layout):
    """-> (Entry, layer index or None), IGNORED, or None when the key is not in the table."""
    ignorable = False
    for rule in layout.rules:
        m = re.match(rule.prefix, key)
        if not m:
            continue
        rest = key[m.end():]
        for ours, theirs in rule.renames:
            if rest.startswith(theirs):
                rest = ours + rest[len(theirs):]
                break
        layer = _LAYER.match(rest)
        name = _LAYER.sub(r"\1{i}.", rest, count=1) if layer else rest
        entry = layout.by_name.get((rule.component, name))
        if entry is not None:
            return entry, (int(layer.group(2)) if layer else None)
        pattern = dict(layout.ignored).get(rule.component)
        ignorable = ignorable or bool(pattern and re.fullmatch(pattern, rest))
    return IGNORED if ignorable else None


def torch_name(entry: Entry, layer: Optional[int], layout: Layout) -> str:
    """The PyTorch key of `entry` (layer `layer`) in `layout`'s canonical naming."""
    rule = next(r for r in layout.rules if r.component == entry.component)
    rest = entry.name.replace("{i}", str(layer)) if entry.stacked else entry.name
    for ours, theirs in rule.renames:
        if rest.startswith(ours):
            rest = theirs + rest[len(ours):]
            break
    return rule.canonical + rest


# ---- families and plans ----

@dataclasses.dataclass
class Source:
    files: WeightFiles
    mapping: dict                 # stored key -> (Entry, layer index or None)


@dataclasses.dataclass
class Plan:
    """Everything known about a PyTorch checkpoint before reading its data."""
    hf_config: dict               # resolved HF config dict (what config.json should say)
    config: object                # our config (LlavaConfig, VideoLlavaConfig, Qwen25VLConfig)
    description: str              # e.g. "legacy HF (language_model.model.*)"
    sources: list                 # [Source], reading order
    shapes: dict                  # Entry -> full pytree shape
    asset_dirs: list              # [(dir, file names or None = all)]: tokenizer / processor files


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family's declarations; `plan` is the one mechanism applied to them."""
    name: str               # in messages: "LLaVA", "Video-LLaVA", "Qwen2.5-VL"
    format: str             # the marker format of its converted directories
    model_types: tuple      # config.json model_type values it reads
    layout: Callable        # our config -> its HF Layout (reads every prefix variant, writes hub names)
    config: Callable        # resolved HF config dict -> our config (CheckpointError if invalid)
    shapes: Callable        # our config -> {Entry: full pytree shape}; only the leaves it has
    resolve: Callable       # config.json dict -> resolved HF config dict
    describe: Callable      # stored keys -> the source's description, for messages
    planner: Optional[Callable] = None   # (path, weights, raw, vision_tower) -> Plan; None: plan_hf

    def plan(self, path: str, weights: WeightFiles, raw: dict,
             vision_tower: Optional[str] = None) -> Plan:
        if self.planner is not None:
            return self.planner(path, weights, raw, vision_tower)
        return plan_hf(self, path, weights, raw)


def parse_config(config_class, hf_config: dict):
    """`config_class.from_hf(hf_config)`: our config of a resolved HF config dict, a bad
    field as one CheckpointError line naming config.json."""
    try:
        return config_class.from_hf(hf_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: {e}") from None


def plan_hf(family: Family, path: str, weights: WeightFiles, raw: dict) -> Plan:
    """Plan an HF directory of `family` (one weight source): config, keys, shapes, completeness."""
    hf_config = family.resolve(raw)
    cfg = family.config(hf_config)
    layout = family.layout(cfg)
    if not any(isinstance(parse_key(k, layout), tuple) for k in weights.tensors):
        sample = ", ".join(repr(k) for k in sorted(weights.tensors)[:3]) or "no keys at all"
        raise CheckpointError(f"config.json says model_type {raw.get('model_type')!r} but no "
                              f"weight uses the {family.name} layout (keys like {sample}); "
                              "fix config.json")
    shapes = family.shapes(cfg)
    src = map_keys(weights, layout, shapes, {}, family.name)
    check_complete([src], shapes, lambda e: layout, path)
    return Plan(hf_config, cfg, family.describe(weights.tensors), [src], shapes, [(path, None)])


def with_hf_defaults(hf_config_class, d: dict, family: str) -> dict:
    """`d` as transformers' `hf_config_class` completes it (minus bookkeeping keys)."""
    try:
        resolved = hf_config_class.from_dict(dict(d)).to_dict()
    except Exception as e:   # transformers validates with assorted exception types
        raise CheckpointError(f"config.json is not a valid {family} config: {e}") from None
    for k in ("_name_or_path", "transformers_version"):
        resolved.pop(k, None)
    return resolved


def map_keys(weights: WeightFiles, layout: Layout, shapes: dict, claimed: dict, family: str,
             keep: Optional[Callable] = None) -> Source:
    """Map stored keys to (Entry, layer); reject unknown keys, duplicates and wrong shapes.

    claimed: (Entry, layer) -> key, shared across the sources of one plan.
    """
    mapping, unexpected = {}, []
    for key, info in weights.tensors.items():
        if keep is not None and not keep(key):
            continue
        parsed = parse_key(key, layout)
        if parsed is IGNORED:
            continue
        if parsed is None or parsed[0] not in shapes:
            if parsed is not None and parsed[0].component == "head":
                continue    # tied embeddings: lm_head is the embedding, as in HF
            unexpected.append(key)
            continue
        entry, layer = parsed
        if entry.stacked and layer >= shapes[entry][0]:
            unexpected.append(f"{key} (config has {shapes[entry][0]} layers)")
            continue
        if (entry, layer) in claimed:
            raise CheckpointError(f"weights {claimed[entry, layer]!r} and {key!r} are the same "
                                  "parameter under two names; keep one of them")
        if info.shape is not None:
            check_shape(key, info.shape, entry, shapes)
        claimed[entry, layer] = key
        mapping[key] = (entry, layer)
    if unexpected:
        raise CheckpointError(f"{weights.directory} has {len(unexpected)} unexpected weights: "
                              f"{few(unexpected)}; they do not belong to a {family} model with "
                              "this config.json")
    return Source(weights, mapping)


def check_complete(sources: list, shapes: dict, display: Callable, path: str) -> None:
    """Every (Entry, layer) the config needs is mapped; display(entry) -> Layout to name it."""
    have = {v for s in sources for v in s.mapping.values()}
    missing = []
    for entry, shape in shapes.items():
        for layer in (range(shape[0]) if entry.stacked else [None]):
            if (entry, layer) not in have:
                missing.append(torch_name(entry, layer, display(entry)))
    if missing:
        raise CheckpointError(f"{path} is missing {len(missing)} weights that config.json needs: "
                              f"{few(missing)}; the checkpoint is incomplete or the config is wrong")


def check_shape(key: str, shape: tuple, entry: Entry, shapes: dict) -> None:
    want = shapes[entry][1:] if entry.stacked else shapes[entry]
    want = entry.kind.torch_shape(want)
    if tuple(shape) != want:
        raise CheckpointError(f"weight {key!r} has shape {list(shape)} but config.json implies "
                              f"{list(want)}; the config and the weights disagree")


def few(names: list, n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")


# ---- streaming: read (stored -> tree) and export (tree -> stored) ----

def read_params(plan: Plan, dtype=None, place: Optional[Callable] = None,
                progress: Optional[bool] = None) -> dict:
    """Stream every planned tensor into the param pytree.

    place(path, np_array) is called once per finished leaf (e.g. jax.device_put
    onto its sharding); its result goes into the tree and the host buffer is dropped.
    A stacked leaf `[num_layers, ...]` is assembled in one buffer and placed as
    soon as its last layer arrives. progress: `duet_jax.progress.progress_bar`'s `enabled`
    (None: a bar on a terminal only).
    """
    from duet_jax.progress import progress_bar

    out_dtype = cast_dtype(dtype)
    place = place or (lambda path, arr: arr)
    leaf_dtype = _planned_dtypes(plan, out_dtype)
    buffers, counts, flat = {}, {}, {}
    total = sum(len(s.mapping) for s in plan.sources)
    with progress_bar(total=total, unit="tensor", desc="reading weights", enabled=progress) as bar:
        for src in plan.sources:
            for file in src.files.files:
                wanted = [k for k in src.files.keys_in(file) if k in src.mapping]
                if not wanted:
                    continue
                stream = (iter_safetensors(file, [src.files.tensors[k] for k in wanted])
                          if src.files.kind == "safetensors" else iter_bin(file))
                for key, arr in stream:
                    if key not in src.mapping:
                        continue
                    entry, layer = src.mapping[key]
                    check_shape(key, arr.shape, entry, plan.shapes)
                    leaf = entry.kind.to_tree(arr)
                    dt = leaf_dtype.get(entry) or arr.dtype
                    if not entry.stacked:
                        # a transposed view is fine: `place` or the caller copies it once
                        flat[entry.path] = place(entry.path, leaf.astype(dt, copy=False))
                    else:
                        if entry not in buffers:
                            buffers[entry] = np.empty(plan.shapes[entry], dt)
                            counts[entry] = 0
                        buffers[entry][layer] = leaf
                        counts[entry] += 1
                        if counts[entry] == plan.shapes[entry][0]:
                            flat[entry.path] = place(entry.path, buffers.pop(entry))
                    del arr, leaf
                    bar.update()
    return unflatten_tree(flat)


def _planned_dtypes(plan: Plan, out_dtype) -> dict:
    """Entry -> output dtype: the requested one, else the stored one (promoted across layers)."""
    if out_dtype is not None:
        return {e: out_dtype for e in plan.shapes}
    stored: dict = {}
    for src in plan.sources:
        for key, (entry, _) in src.mapping.items():
            stored.setdefault(entry, []).append(src.files.tensors[key].dtype)
    return {e: np.result_type(*d) for e, d in stored.items() if all(x is not None for x in d)}


def export_entries(flat: dict, layout: Layout, source: str, family: str) -> list:
    """{pytree path: array} -> [(torch key, shape, dtype, produce)] in table order, for
    `reader.write_safetensors`; tensors are the leaves transformed back, produced one by one."""
    extra = set(flat) - {e.path for e in layout.table}
    if extra:
        raise CheckpointError(f"{source}: params hold leaves outside the {family} layout: "
                              f"{', '.join('/'.join(p) for p in sorted(extra)[:3])}")
    entries = []
    for entry in layout.table:
        if entry.path not in flat:
            continue
        leaf = flat[entry.path]
        for layer in (range(leaf.shape[0]) if entry.stacked else [None]):
            part_shape = leaf.shape[1:] if entry.stacked else leaf.shape
            entries.append((torch_name(entry, layer, layout), entry.kind.torch_shape(part_shape),
                            np.dtype(leaf.dtype), _producer(leaf, layer, entry.kind)))
    return entries


def _producer(leaf, layer, kind):
    def produce():
        return kind.to_torch(leaf[layer] if layer is not None else leaf)
    return produce
