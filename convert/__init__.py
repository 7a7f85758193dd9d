"""`python -m convert` (see `convert/__main__.py`); the library is `duet_jax.checkpoints.convert`.

The names below are re-exported so that `import convert; convert.export_hf(...)` keeps working.
"""
from duet_jax.checkpoints.convert import (ASSET_FILES, DEFAULT_SHARD_BYTES, convert_to_orbax,
                                          copy_assets, export_hf, staged_output)

__all__ = ["ASSET_FILES", "DEFAULT_SHARD_BYTES", "convert_to_orbax", "copy_assets", "export_hf",
           "staged_output"]
