"""Train-state checkpoints with orbax `CheckpointManager`.

Each step directory `DIR/checkpoints/<step>/` holds two items: `state` (params,
optimizer state, step counter, PRNG key; written shard-wise from every
process) and `data` (the data iterator's JSON state). Orbax writes into a
temporary directory and renames it when every item is complete, so a
checkpoint is either whole or invisible; temporaries left by a killed run are
removed when the next run opens the directory. Saves are asynchronous: `save`
returns once the arrays are copied off the devices.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from duet_jax.checkpoints.reader import CheckpointError
from duet_jax.training.config import CheckpointConfig, ConfigError
from duet_jax.training.hosts import barrier, is_main


class Checkpoints:
    """Save every N steps, keep the newest K, restore the newest onto given shardings."""

    def __init__(self, directory: str, cfg: CheckpointConfig):
        self.cfg = cfg
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=cfg.async_save)
        # handlers named up front: item_metadata of a step not yet restored needs them
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list:
        return list(self.manager.all_steps())

    def should_save(self, step: int, last_step: int) -> bool:
        return step % self.cfg.save_every == 0 or step == last_step

    def save(self, step: int, state: dict, data_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)),
                          force=True)

    def restore(self, step: int, abstract_state: dict, shardings: dict) -> Tuple[dict, dict]:
        """(state placed on `shardings`, data-iterator state) of checkpoint `step`."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def restore_newest(self, abstract_state: dict, shardings: dict,
                       warn: Callable[[str], None]) -> Tuple[int, Optional[dict], Optional[dict]]:
        """(step, state, data-iterator state) of the newest readable checkpoint; (0, None,
        None) when there is none. An unreadable one (a truncated or missing file, bad
        metadata) is reported through `warn`, moved to `<output_dir>/unreadable-checkpoints/`
        (kept for inspection; the step is trained and saved again) and the previous one is
        tried. A checkpoint of another model or optimizer is a ConfigError."""
        tried = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self._check_structure(step, abstract_state)
                state, data = self.restore(step, abstract_state, shardings)
                return step, state, data
            except ConfigError:
                raise
            except Exception as e:  # orbax/tensorstore raise assorted types for damaged files
                reason = " ".join(str(e).split())[:300] or type(e).__name__
                aside = self._set_aside(step)
                warn(f"warning: checkpoint {self.directory}/{step} is unreadable ({reason}); "
                     f"moved to {aside}, resuming from the previous one")
                tried.append(step)
        if tried:
            self.close()    # the run ends here: no orbax thread left behind
            raise CheckpointError(
                f"no checkpoint in {self.directory} is readable (tried steps "
                f"{', '.join(map(str, tried))}, now in {self._aside_root}); start the run "
                "again in another output_dir, or delete the folder to start over")
        return 0, None, None

    @property
    def _aside_root(self) -> str:
        return os.path.join(os.path.dirname(self.directory), "unreadable-checkpoints")

    def _set_aside(self, step: int) -> str:
        """Move checkpoint `step` out of the manager's folder (process 0; others wait)."""
        target = os.path.join(self._aside_root, str(step))
        if is_main():
            os.makedirs(self._aside_root, exist_ok=True)
            if os.path.exists(target):
                shutil.rmtree(target)
            shutil.move(os.path.join(self.directory, str(step)), target)
        barrier(f"checkpoint {step} set aside")
        self.manager.reload()
        return target

    def _check_structure(self, step: int, abstract_state: dict) -> None:
        """ConfigError if checkpoint `step` holds other leaves or shapes than this run's
        state (another model or optimizer); unreadable metadata raises as it comes."""
        meta = self.manager.item_metadata(step)["state"]
        # Orbax's metadata tree names optimizer states its own way (NamedTuples become
        # dicts): compare the arrays' shapes as a multiset, which any model or optimizer
        # change alters.
        saved = sorted(tuple(m.shape) for m in jax.tree.leaves(getattr(meta, "tree", meta)))
        wanted = sorted(tuple(a.shape) for a in jax.tree.leaves(abstract_state))
        if saved != wanted:
            raise ConfigError(
                f"cannot resume from {self.directory}/{step}: it does not match this run's "
                f"model or optimizer ({len(saved)} arrays saved, {len(wanted)} in this run, "
                "or other shapes); use the config it was written with, or another output_dir")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
