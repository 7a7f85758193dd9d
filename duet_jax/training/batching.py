"""Host side of a train step: group micro-batches, fix the static shapes, place on the mesh.

Everything a compiled step depends on is a `StepLayout` (padded input length,
whether every sample has an image, Stage-2 buffer lengths), computed here from
host-known validity, image flags and labels (docs/ALGORITHM.md §3.6), agreed
across processes, and rounded up so a handful of programs serve a run.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from duet_jax.models.config import LlavaConfig
from duet_jax.labels import IGNORE_INDEX
from duet_jax.reduction.queries import train_query_mask_host
from duet_jax.sharding import DEFAULT_RULES
from duet_jax.training.config import ConfigError
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")


@dataclasses.dataclass(frozen=True)
class StepLayout:
    """Static shape facts of one optimizer step (hashable: one compiled program each)."""
    length: int                                  # padded input length L
    images_in_every_sample: bool
    segment_lengths: Optional[Tuple[int, ...]]   # Stage-2 buffer per boundary, or None
    splice_length: Optional[int] = None          # LM input buffer after Stage 1 (mixed batches)
    any_image: bool = True                       # False: a text-only step runs no tower


def image_counts(config: LlavaConfig, reduction) -> Tuple[int, int, List[int]]:
    """(image ids per sample in input_ids, n_0 tokens entering the LM, [n_0, .., n_S])."""
    n_ids = config.image_seq_length
    stage1 = reduction.stage1 if reduction is not None else None
    n0 = stage1.output_size(config.vision.num_patches) if stage1 else config.num_image_tokens
    counts = reduction.stage2.image_counts(n0) if reduction and reduction.stage2 else [n0]
    return n_ids, n0, counts


def passthrough(batch: Dict[str, np.ndarray], image_token_index: int, n_ids: int,
                queries: str) -> np.ndarray:
    """[B] bool: samples Stage 2 leaves unchanged in training (no image, or an empty query set).

    The model's training query rule run on the host (`train_query_mask_host`, the
    same code) in input coordinates: the rows after the image block are the same
    rows after Stage 1 and after every drop, so the emptiness of the query set is
    decided once, here.
    """
    if queries not in ("all", "last"):
        raise ValueError(f"Stage-2 query set {queries!r} cannot train (no training query "
                         "mask); use a preset with queries 'all' or 'last'")
    ids, valid = batch["input_ids"], batch["attention_mask"].astype(bool)
    is_img = (ids == image_token_index) & valid
    start = np.where(is_img.any(axis=1), is_img.argmax(axis=1), -1)
    mask, _ = train_query_mask_host(batch["labels"], valid, start, n_ids, queries)
    return ~mask.any(axis=1)


def _round_up(n: int, bucket: int) -> int:
    return max(bucket, -(-n // bucket) * bucket)


def sample_lengths(batch: Dict[str, np.ndarray], config: LlavaConfig, reduction) -> np.ndarray:
    """int64 [S+1, B]: each sample's valid length entering the LM and after each boundary."""
    n_ids, n0, counts = image_counts(config, reduction)
    lengths = batch["attention_mask"].astype(bool).sum(axis=1) - np.where(batch["has_image"],
                                                                          n_ids - n0, 0)
    out = [lengths.astype(np.int64)]
    if len(counts) > 1:
        through = passthrough(batch, config.image_token_index, n_ids, reduction.stage2.queries)
        for s in range(len(counts) - 1):
            if counts[s] > 0:   # a boundary with no image token left does not run
                lengths = np.where(through, lengths, lengths - (counts[s] - counts[s + 1]))
            out.append(lengths.astype(np.int64))
    return np.stack(out)


def local_needs(batches: Sequence[Dict[str, np.ndarray]], config: LlavaConfig, reduction
                ) -> np.ndarray:
    """int64 [4 + S]: (longest padded length, all-images flag, any-image flag, longest length
    entering the LM, longest length after each boundary)."""
    per_sample = np.concatenate([sample_lengths(b, config, reduction) for b in batches], axis=1)
    head = [max(b["input_ids"].shape[1] for b in batches),
            all(bool(b["has_image"].all()) for b in batches),
            any(bool(b["has_image"].any()) for b in batches)]
    return np.concatenate([np.asarray(head, np.int64), per_sample.max(axis=1)])


def agree(needs: np.ndarray) -> np.ndarray:
    """Combine every process's `local_needs` (max lengths and any-image flag, AND of the
    all-images flag)."""
    if jax.process_count() == 1:
        return needs
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(needs))      # [P, 4 + S]
    out = every.max(axis=0)
    out[1] = every[:, 1].min()
    return out


def plan_layout(needs: np.ndarray, config: LlavaConfig, reduction, bucket: int) -> StepLayout:
    """The step's static layout from the agreed needs."""
    length, all_images, any_image = int(needs[0]), bool(needs[1]), bool(needs[2])
    n_ids, n0, _ = image_counts(config, reduction)
    buffer = length - (n_ids - n0) if all_images else length
    # Mixed image/text batches still shrink by Stage 1: the host knows the longest sample.
    splice = None if all_images else min(length, _round_up(int(needs[3]), bucket))
    buffer = buffer if splice is None else splice
    if not any_image:   # nothing to reduce: the unreduced forward, without the tower
        return StepLayout(length, False, None, splice, any_image=False)
    if reduction is None or reduction.stage2 is None:
        return StepLayout(length, all_images, None, splice)
    segs = []
    for longest in needs[4:]:
        buffer = min(buffer, _round_up(int(longest), bucket))
        segs.append(buffer)
    return StepLayout(length, all_images, tuple(segs), splice)


def stack(batches: Sequence[Dict[str, np.ndarray]], length: int, pad_id: int
          ) -> Dict[str, np.ndarray]:
    """Micro-batches -> arrays [A, B, ...], right-padded to `length`."""
    def pad(x, value):
        extra = length - x.shape[1]
        return np.pad(x, ((0, 0), (0, extra)), constant_values=value) if extra else x
    return {"input_ids": np.stack([pad(b["input_ids"], pad_id) for b in batches]),
            "attention_mask": np.stack([pad(b["attention_mask"], 0) for b in batches]),
            "labels": np.stack([pad(b["labels"], IGNORE_INDEX) for b in batches]),
            "pixel_values": np.stack([b["pixel_values"] for b in batches])}


def data_axes(mesh: Mesh) -> tuple:
    return tuple(a for a in (DEFAULT_RULES["batch"] or ()) if a in mesh.shape)


def stacked_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """[A, B, ...] arrays: micro-batch axis replicated, batch axis over the data-parallel axes."""
    axes = data_axes(mesh)
    return NamedSharding(mesh, P(None, axes or None, *([None] * (ndim - 2))))


def check_batch_divides(micro_batch: int, mesh: Mesh) -> None:
    ways = int(np.prod([mesh.shape[a] for a in data_axes(mesh)]))
    if micro_batch % ways or micro_batch % jax.process_count():
        raise ConfigError(f"micro_batch_size={micro_batch} must be a multiple of the data-parallel "
                         f"ways ({ways} = mesh data x fsdp) and of the {jax.process_count()} "
                         "processes; change micro_batch_size or the mesh")


def to_global(stacked: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
    """Process-local [A, B_local, ...] arrays -> global arrays sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(stacked_sharding(mesh, v.ndim), v)
            for k, v in stacked.items()}
