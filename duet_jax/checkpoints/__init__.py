"""Checkpoint conversion between PyTorch LLaVA checkpoints and the Flax param pytree.

`load_params(path)` reads an HF llava dir (any key-prefix variant that
transformers accepts), an original LLaVA dir (plus its CLIP dir), or a
directory written by `python -m convert`.
"""
from duet_jax.checkpoints.load import load_params, plan_conversion, read_params
from duet_jax.checkpoints.orbax_io import restore_params, save_params
from duet_jax.checkpoints.reader import CheckpointError

__all__ = ["CheckpointError", "load_params", "plan_conversion", "read_params",
           "restore_params", "save_params"]
