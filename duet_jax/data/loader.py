"""Static-shape training batches from LLaVA-JSON records, with exact resume.

Order: each epoch is a permutation of all records drawn from
`np.random.default_rng([seed, epoch])`; global step s of an epoch takes the
slice `[s*G, (s+1)*G)` of it (G = batch_size * process_count) and process p
takes its `[p*B, (p+1)*B)` part. Processes therefore see disjoint data and the
union of a step's per-process batches does not depend on the process count;
the last `N mod G` records of each epoch's permutation are dropped.

Shapes: every batch is padded to the smallest length bucket that holds its
longest sample, so one compiled program per bucket serves the whole run:

    input_ids      [B, L] int32   right padded with the tokenizer's pad id
    attention_mask [B, L] int32   1 = real token
    labels         [B, L] int32   -100 = no loss
    pixel_values   [B, 3, H, W] float32   zeros for text-only samples
    has_image      [B] bool

Prefetch uses `grain` (MapDataset -> to_iter_dataset with a thread pool); the
iterator state `{"epoch", "position", ...}` is our own (a step counter), so a
restored iterator rebuilds the pipeline at that step and yields exactly the
batches the original would have.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from duet_jax.data.llava_json import EncodedSample, SampleEncoder
from duet_jax.data.tokenize import IGNORE_INDEX, right_pad

log = logging.getLogger(__name__)

STAT_KEYS = ("samples", "text_only", "truncated", "mismatch", "image_cut")
_FOREVER = 2 ** 62


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Batching options. `batch_size` is per process; `num_epochs=None` repeats forever."""
    batch_size: int
    length_buckets: Tuple[int, ...] = ()     # () -> default_length_buckets(max_length)
    seed: int = 0
    shuffle: bool = True
    num_epochs: Optional[int] = None
    process_index: int = 0
    process_count: int = 1
    num_threads: int = 2                     # background workers building batches
    prefetch: int = 2                        # batches buffered ahead of the consumer


def default_length_buckets(max_length: int, count: int = 4) -> Tuple[int, ...]:
    """`count` evenly spaced lengths up to `max_length`, rounded up to multiples of 8."""
    out = {min(max_length, int(math.ceil(max_length * k / count / 8)) * 8) for k in range(1, count + 1)}
    return tuple(sorted(out | {max_length}))


def choose_bucket(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length (buckets ascending)."""
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise ValueError(f"sequence length {length} exceeds the largest bucket {buckets[-1]}")


class EpochSchedule:
    """Deterministic shuffled, sharded record indices per step (see module docstring)."""

    def __init__(self, num_records: int, batch_size: int, *, seed: int, shuffle: bool,
                 process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_records = num_records
        self.batch_size = batch_size
        self.global_batch = batch_size * process_count
        self.steps_per_epoch = num_records // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{num_records} records cannot fill one global batch of "
                             f"{self.global_batch} (batch_size x process_count); lower batch_size")
        self.seed, self.shuffle = seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self._cache: Dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Permutation [N] of record indices for `epoch` (identical on every process)."""
        with self._lock:
            order = self._cache.get(epoch)
            if order is None:
                if self.shuffle:
                    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
                else:
                    order = np.arange(self.num_records)
                self._cache = {epoch: order, **{e: o for e, o in self._cache.items() if e == epoch - 1}}
            return order

    def step_indices(self, step: int) -> np.ndarray:
        """Record indices [batch_size] of this process for global step `step` (0-based)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.global_batch + self.process_index * self.batch_size
        return self.epoch_order(epoch)[start:start + self.batch_size]


def collate(samples: Sequence[EncodedSample], *, length: int, pad_id: int,
            image_shape: Tuple[int, int, int]) -> Dict[str, np.ndarray]:
    """Pad samples into one batch of static length `length` (see module docstring)."""
    input_ids, attention_mask = right_pad([s.example.input_ids for s in samples], length, pad_id)
    labels, _ = right_pad([s.example.labels for s in samples], length, IGNORE_INDEX)
    pixel_values = np.zeros((len(samples),) + tuple(image_shape), np.float32)
    has_image = np.zeros((len(samples),), bool)
    for b, s in enumerate(samples):
        if s.pixel_values is not None:
            pixel_values[b] = s.pixel_values
            has_image[b] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "pixel_values": pixel_values, "has_image": has_image}


def _sample_stats(samples: Sequence[EncodedSample]) -> Dict[str, int]:
    stats = dict.fromkeys(STAT_KEYS, 0)
    for s in samples:
        ex = s.example
        stats["samples"] += 1
        stats["text_only"] += int(not ex.has_image)
        stats["truncated"] += int(ex.truncated)
        stats["mismatch"] += int(ex.mismatch)
        stats["image_cut"] += int(ex.image_cut)
        if ex.mismatch:
            log.warning("record %d: tokenization mismatch, all labels masked (as LLaVA)", s.index)
        if ex.image_cut:
            log.warning("record %d: max_length cuts the image block; kept the text before it "
                        "with no labels", s.index)
    return stats


class TrainBatchIterator:
    """Iterator of batch dicts with checkpointable state `{"epoch", "position", ...}`.

    `get_state()` describes the next batch to be returned; `set_state(state)`
    (or the `state=` argument) restarts the background pipeline there. `stats`
    counts samples, text-only, truncated, mismatch and image_cut over the
    batches consumed so far (carried in the state).
    """

    def __init__(self, records: List[dict], encoder: SampleEncoder, config: LoaderConfig,
                 *, state: Optional[dict] = None):
        self.records, self.encoder, self.config = records, encoder, config
        self.buckets = tuple(config.length_buckets) or default_length_buckets(encoder.max_length)
        if list(self.buckets) != sorted(set(self.buckets)) or self.buckets[-1] != encoder.max_length:
            raise ValueError(f"length_buckets {self.buckets} must be strictly increasing and end "
                             f"at max_length={encoder.max_length}")
        self.schedule = EpochSchedule(len(records), config.batch_size, seed=config.seed,
                                      shuffle=config.shuffle, process_index=config.process_index,
                                      process_count=config.process_count)
        pad = getattr(encoder.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.total_steps = (_FOREVER if config.num_epochs is None
                            else config.num_epochs * self.schedule.steps_per_epoch)
        self.stats = collections.Counter(dict.fromkeys(STAT_KEYS, 0))
        self._step = 0
        self._iter = None
        self.set_state(state or {"epoch": 0, "position": 0})

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    def build_batch(self, step: int) -> Tuple[Dict[str, np.ndarray], Dict[str, int]]:
        """The batch of global step `step` and its sample statistics (pure in `step`)."""
        samples = [self.encoder(self.records[int(i)], int(i))
                   for i in self.schedule.step_indices(step)]
        length = choose_bucket(max(len(s.example.input_ids) for s in samples), self.buckets)
        batch = collate(samples, length=length, pad_id=self.pad_id,
                        image_shape=self.encoder.image_shape)
        return batch, _sample_stats(samples)

    def _identity(self) -> dict:
        """What a restored state must match: the order of the global batches. The process
        count may change (a 2-process run resumed by 1 process): the union of a step's
        per-process batches does not depend on it."""
        c = self.config
        return {"seed": c.seed, "shuffle": c.shuffle, "num_records": len(self.records),
                "global_batch": c.batch_size * c.process_count}

    def get_state(self) -> dict:
        """JSON-serializable position of the next batch, plus what must match on restore."""
        epoch, position = divmod(self._step, self.schedule.steps_per_epoch)
        return {"epoch": epoch, "position": position, **self._identity(),
                "stats": dict(self.stats)}

    def set_state(self, state: dict) -> None:
        """Resume at `state` (from `get_state`); a changed data setup is an error."""
        for key, value in self._identity().items():
            if key in state and state[key] != value:
                raise ValueError(f"iterator state has {key}={state[key]!r} but this loader has "
                                 f"{value!r}; resume with the same data configuration")
        position = int(state["position"])
        if not 0 <= position < self.schedule.steps_per_epoch:
            raise ValueError(f"state position {position} outside [0, {self.steps_per_epoch})")
        self._step = int(state["epoch"]) * self.schedule.steps_per_epoch + position
        self.stats = collections.Counter(dict.fromkeys(STAT_KEYS, 0))
        self.stats.update(state.get("stats", {}))
        self._iter = self._pipeline(self._step)

    def _pipeline(self, start: int):
        import grain

        steps = grain.MapDataset.range(start, max(start, self.total_steps)).map(self.build_batch)
        if self.config.num_threads <= 0:
            return iter(steps)      # synchronous, for debugging
        options = grain.ReadOptions(num_threads=self.config.num_threads,
                                    prefetch_buffer_size=max(1, self.config.prefetch))
        return iter(steps.to_iter_dataset(options))

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        batch, stats = next(self._iter)
        self._step += 1
        self.stats.update(stats)
        return batch


def make_train_iterator(json_path: str, image_folder: str, tokenizer, image_processor, *,
                        template: str, image_token_index: int, image_seq_length: int,
                        max_length: int, config: LoaderConfig, state: Optional[dict] = None,
                        check_images: bool = True) -> TrainBatchIterator:
    """Load + validate a LLaVA-JSON file and return its batch iterator (resumed at `state`)."""
    from duet_jax.data.llava_json import load_records

    records = load_records(json_path, template=template, image_folder=image_folder,
                           check_images=check_images)
    encoder = SampleEncoder(tokenizer, image_processor, image_folder=image_folder,
                            template=template, image_token_index=image_token_index,
                            image_seq_length=image_seq_length, max_length=max_length)
    return TrainBatchIterator(records, encoder, config, state=state)
