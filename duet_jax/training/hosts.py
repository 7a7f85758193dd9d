"""What a run started as several processes (`distributed.initialize=true`) must agree on.

One writer: process 0 writes every host-side file (config.yaml, metrics, loss.png, the HF
export); every process takes part in the collective work (orbax saves, gathering sharded
params to the host) and passes the same barriers, in the same order, so none exits while
another still waits on it.

A stop request (SIGTERM from a scheduler or `kill`) ends the run after the current step
with a checkpoint. With one process a signal handler sets a flag; with several, JAX's
preemption service (started by `jax.distributed.initialize`) catches SIGTERM on whichever
process got it and names one step at which every process stops
(`multihost_utils.reached_preemption_sync_point`).
"""
from __future__ import annotations

import signal
import threading
from typing import Mapping

import jax
import numpy as np


def is_main() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"duet_jax {name}")


def host_copy(tree: Mapping, keep: bool) -> dict:
    """NumPy copy of a pytree of (possibly sharded, multi-process) arrays.

    Every process must call this (gathering a leaf spread over processes is a collective);
    only processes with `keep` hold the result, leaf by leaf, so the others never hold more
    than one gathered leaf."""
    from duet_jax.checkpoints.orbax_io import flatten_tree, unflatten_tree

    out = {}
    for path, leaf in sorted(flatten_tree(tree).items()):
        if getattr(leaf, "is_fully_addressable", True):
            value = np.asarray(jax.device_get(leaf)) if keep else None
        else:
            from jax.experimental import multihost_utils

            value = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        if keep:
            out[path] = value
    return unflatten_tree(out)


def summed(counts: Mapping[str, int]) -> dict:
    """`counts` summed over the processes (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return dict(counts)
    from jax.experimental import multihost_utils

    keys = sorted(counts)
    every = multihost_utils.process_allgather(np.array([int(counts[k]) for k in keys], np.int64))
    return dict(zip(keys, np.asarray(every).reshape(-1, len(keys)).sum(0).tolist()))


class StopRequest:
    """`with StopRequest() as stop:` ... `if stop.reached(step): save and leave`.

    Every process must call `reached(step)` once per step, with the same step numbers."""

    def __init__(self):
        self.signal_name = None
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def _note(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = "SIGTERM"
            except RuntimeError:    # jax_enable_preemption_service off: no notices
                pass
        return self.signal_name is not None
