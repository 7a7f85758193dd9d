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
from typing import Optional, Tuple

import jax
import orbax.checkpoint as ocp

from duet_jax.training.config import CheckpointConfig, ConfigError


class Checkpoints:
    """Save every N steps, keep the newest K, restore the newest onto given shardings."""

    def __init__(self, directory: str, cfg: CheckpointConfig):
        self.cfg = cfg
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=cfg.async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

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
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"cannot resume from {self.directory}/{step}: it does not match this run's model "
                f"or optimizer ({str(e).splitlines()[0][:200]}); use the config it was written "
                "with, or another output_dir") from None
        return out["state"], out["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
