"""Checkpoint conversion between PyTorch checkpoints and the Flax param pytree, every family.

`load_params(path)` reads an HF dir of LLaVA-1.5 / LLaVA-NeXT / Video-LLaVA /
Qwen2.5-VL (any key-prefix variant that transformers accepts), an original
LLaVA dir (plus its CLIP dir), or a directory written by `python -m convert`.

    plan.py       the one mechanism: Entry/Rule/Layout tables, key checks, streaming
    layouts.py    LLaVA's table; llava.py its config parsing and original-layout planner
    video.py      Video-LLaVA's table;  qwen25vl.py  Qwen2.5-VL's table (+ load_qwen_params)
    load.py       dispatch by config.json model_type / marker format
    convert.py    convert_to_orbax / export_hf (what `python -m convert` runs)
    reader.py     weight files (safetensors, safe .bin);  orbax_io.py  orbax + converted dirs
"""
from duet_jax.checkpoints.load import load_params, plan_conversion, read_params
from duet_jax.checkpoints.orbax_io import restore_params, save_params
from duet_jax.checkpoints.reader import CheckpointError

__all__ = ["CheckpointError", "load_params", "plan_conversion", "read_params",
           "restore_params", "save_params"]
