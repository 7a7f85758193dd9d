"""Jitted, sharded LLaVA fine-tuning with DUET token reduction (docs/API.md §5).

* `config`: typed YAML configs with `--set key=value` overrides.
* `optim`: AdamW + warmup/cosine + clipping, frozen groups via `optax.multi_transform`.
* `batching`: host-side static layouts (padded length, Stage-2 buffer lengths).
* `step`: loss and the jitted train step with explicit shardings.
* `checkpoint`: orbax `CheckpointManager` (state + data-iterator state).
* `loop`: `train(cfg)`, the run behind `python train.py`.
"""
from duet_jax.training.config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "load_config"]
