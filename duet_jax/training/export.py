"""The end of a run: `output_dir/final` (converted duet_jax dir) and `output_dir/hf` (llava-hf).

Works with any number of processes: all of them write their shards of `final/params`
(orbax) and gather the params to the host (a collective); process 0 alone writes the
JSON files and the HF directory from that host copy (never re-reading `final` with
orbax, whose restore waits for processes that are not reading); then everyone meets at a
barrier, so no process exits while process 0 still writes.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Optional, Tuple

import numpy as np

from duet_jax.models.config import LlavaConfig
from duet_jax.training.hosts import barrier, host_copy, is_main


def export_trained(params: dict, model_cfg: LlavaConfig, assets: str, output_dir: str,
                   dtype: Optional[str], hf: bool = True) -> Tuple[str, Optional[str]]:
    """Write `output_dir/final` and, with `hf`, `output_dir/hf` (in `dtype`, None keeps the
    params' dtype). Every process must call it. -> (final dir, hf dir or None)."""
    from duet_jax.checkpoints.convert import (ASSET_FILES, staged_output, write_hf)
    from duet_jax.checkpoints.load import FORMAT, MARKER, PARAMS_SUBDIR
    from duet_jax.checkpoints.orbax_io import cast_dtype, flatten_tree, save_params, unflatten_tree

    final = os.path.join(output_dir, "final")
    hf_dir = os.path.join(output_dir, "hf")
    cast = cast_dtype(dtype)        # a bad export_dtype fails before anything is removed
    if is_main():
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(hf_dir, ignore_errors=True)
        for stale in glob.glob(os.path.join(output_dir, ".hf.partial-*")):   # a killed export's
            shutil.rmtree(stale, ignore_errors=True)
    barrier("export cleared")
    save_params(os.path.join(final, PARAMS_SUBDIR), params)
    host = host_copy(params, keep=is_main()) if hf else None
    if is_main():
        with open(os.path.join(final, "config.json"), "w") as f:
            json.dump(model_cfg.to_hf(), f, indent=2, sort_keys=True)
        for name in ASSET_FILES:   # tokenizer / processor files travel with the weights
            if os.path.isfile(os.path.join(assets, name)):
                shutil.copyfile(os.path.join(assets, name), os.path.join(final, name))
        with open(os.path.join(final, MARKER), "w") as f:   # last: marks `final` complete
            json.dump({"format": FORMAT, "version": 1, "params": PARAMS_SUBDIR,
                       "source": "duet_jax training", "dtype": None}, f, indent=2)
        if hf:
            if cast is not None:
                host = unflatten_tree({p: np.asarray(v).astype(cast)
                                       for p, v in flatten_tree(host).items()})
            with staged_output(hf_dir) as tmp:
                write_hf(tmp, host, model_cfg.to_hf(), [(final, None)],
                         source="duet_jax training")
    barrier("export written")
    return final, hf_dir if hf else None
