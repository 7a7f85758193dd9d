"""Checkpoint conversion, every family: PyTorch -> orbax (`convert_to_orbax`) and back (`export_hf`).

`python -m convert` is the command line over this module. The source's family
(LLaVA-1.5 / NeXT, Video-LLaVA, Qwen2.5-VL) comes from its config.json or its
marker; its table goes through the one `plan` mechanism both ways. Outputs are
written into a hidden sibling directory and renamed into place only when
complete, so a crash never leaves a directory that looks finished.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from typing import Optional

import numpy as np

from duet_jax.checkpoints.load import (checkpoint_kind, family_of, plan_conversion,
                                       read_converted_dir)
from duet_jax.checkpoints.orbax_io import (MARKER, PARAMS_SUBDIR, cast_dtype, flatten_tree,
                                           leaf_nbytes, params_metadata, restore_params,
                                           save_params, unflatten_tree, wait_until_quiet)
from duet_jax.checkpoints.plan import export_entries, read_params
from duet_jax.checkpoints.reader import CheckpointError, write_safetensors

ASSET_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
               "preprocessor_config.json", "video_preprocessor_config.json",
               "processor_config.json", "generation_config.json")
DEFAULT_SHARD_BYTES = 5 * 1024 ** 3


@contextlib.contextmanager
def staged_output(dst: str, flag: str = "--dst"):
    """Yield a temp dir next to `dst`; rename it to `dst` on success, delete it on failure.
    `flag`: the command-line option that named `dst`, for the error messages."""
    dst = os.path.abspath(dst)
    if os.path.exists(dst):
        if not os.path.isdir(dst) or os.listdir(dst):
            raise CheckpointError(f"{dst} already exists; remove it or choose another {flag}")
        os.rmdir(dst)
    parent = os.path.dirname(dst)
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.partial-{os.getpid()}")
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(f"{flag} {dst} lies under a file, not a folder; choose a {flag} "
                              "inside a folder") from None
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        yield tmp
        os.rename(tmp, dst)
    except OSError as e:   # disk full / permission: name --dst, not the hidden staging dir
        _remove_staging(tmp)
        if e.errno is None or (e.filename is not None and not str(e.filename).startswith(tmp)):
            raise
        raise OSError(e.errno, e.strerror, dst) from None
    except BaseException:
        _remove_staging(tmp)
        raise


def _remove_staging(tmp: str, settle_s: float = 0.3, limit_s: float = 3.0) -> None:
    """Remove a failed output's staging dir, and again while it reappears: after a failed
    orbax save, TensorStore I/O threads still finishing recreate its folders for a moment."""
    def reappeared() -> bool:
        if not os.path.exists(tmp):
            return False
        shutil.rmtree(tmp, ignore_errors=True)
        return True

    shutil.rmtree(tmp, ignore_errors=True)
    wait_until_quiet(reappeared, settle_s, limit_s)


def copy_assets(sources: list, dst: str) -> list:
    """Copy tokenizer / processor / generation files. -> copied names.

    sources: [(dir, names or None for all of ASSET_FILES + chat_template*)];
    an earlier dir wins. A CLIP dir contributes only its preprocessor config:
    its tokenizer belongs to CLIP's text tower, not to the LLaVA LM.
    """
    copied = []
    for d, only in sources:
        names = list(ASSET_FILES) + sorted(os.path.basename(p) for p in
                                           glob.glob(os.path.join(d, "chat_template*")))
        for name in names:
            src = os.path.join(d, name)
            if (only is None or name in only) and os.path.isfile(src) and name not in copied:
                shutil.copyfile(src, os.path.join(dst, name))
                copied.append(name)
    return copied


def _read_source(src: str, dtype, vision_tower: Optional[str], progress, as_jax: bool):
    """-> (HF config dict, description, params, asset dirs) from any loadable directory.

    as_jax: finished leaves become jax arrays on the host CPU (what orbax saves
    without another copy); otherwise they stay NumPy.
    """
    if checkpoint_kind(src) == "converted":
        import jax

        _, _, hf_config, params_dir = read_converted_dir(src)
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        on_cpu = unflatten_tree({p: cpu for p in params_metadata(params_dir)})
        params = restore_params(params_dir, dtype=dtype, shardings=on_cpu)
        return hf_config, "converted duet_jax", params, [(src, None)]
    plan = plan_conversion(src, vision_tower)
    place = None
    if as_jax:
        import jax

        cpu = jax.devices("cpu")[0]    # a converter must not fill an accelerator's memory
        place = lambda path, arr: jax.device_put(arr, cpu)
    params = read_params(plan, dtype, place=place, progress=progress)
    return plan.hf_config, plan.description, params, plan.asset_dirs


def _dtype_name(params) -> Optional[str]:
    names = {np.dtype(x.dtype).name for x in flatten_tree(params).values()}
    return names.pop() if len(names) == 1 else None


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def convert_to_orbax(src: str, dst: str, dtype=None, vision_tower: Optional[str] = None,
                     progress=None) -> dict:
    """Convert any loadable checkpoint to a duet_jax directory:

        dst/config.json                 the family's HF config dict (defaults filled in)
        dst/duet_jax_checkpoint.json    format marker, source layout, dtype
        dst/params/                     orbax checkpoint of the param pytree
        dst/<tokenizer / processor files>
    """
    cast_dtype(dtype)   # reject a bad dtype before reading anything
    with staged_output(dst) as tmp:
        hf_config, description, params, asset_dirs = _read_source(src, dtype, vision_tower, progress,
                                                                   as_jax=True)
        dtype_name = _dtype_name(params)
        if dtype_name:
            hf_config = dict(hf_config, dtype=dtype_name)
        save_params(os.path.join(tmp, PARAMS_SUBDIR), params)
        _write_json(os.path.join(tmp, "config.json"), hf_config)
        _write_json(os.path.join(tmp, MARKER), {"format": family_of(hf_config).format, "version": 1,
                                                "params": PARAMS_SUBDIR, "source": description,
                                                "dtype": dtype_name})
        assets = copy_assets(asset_dirs, tmp)
    return {"source": description, "tensors": len(flatten_tree(params)),
            "bytes": leaf_nbytes(params), "dtype": dtype_name, "assets": assets}


def export_hf(src: str, dst: str, dtype=None, vision_tower: Optional[str] = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress=None) -> dict:
    """Write an HF directory that transformers' `from_pretrained` loads: llava-hf
    (`LlavaForConditionalGeneration`, or the NeXT one), `VideoLlavaForConditionalGeneration`
    or `Qwen2_5_VLForConditionalGeneration`, after the source's family.

    Names are the family's hub ones (its `Layout`'s canonical prefixes); tensors
    are the stored values transformed back, so fp32 and bf16 round trips are bit-exact.
    """
    cast_dtype(dtype)
    with staged_output(dst) as tmp:
        hf_config, description, params, asset_dirs = _read_source(src, dtype, vision_tower, progress,
                                                                   as_jax=False)
        info = write_hf(tmp, params, hf_config, asset_dirs, source=src,
                        max_shard_bytes=max_shard_bytes, progress=progress)
    return dict(info, source=description)


def write_hf(directory: str, params, hf_config: dict, asset_dirs: list, *, source: str = "params",
             max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress=None) -> dict:
    """Write `params` (the Flax pytree of `hf_config`'s family) into the existing `directory`
    as an HF checkpoint: safetensors shards (+ index), config.json and the asset files of
    `asset_dirs` (`copy_assets`). `export_hf` and `duet_jax.tiny` write through this."""
    from duet_jax.progress import progress_bar

    flat = {p: np.asarray(v) for p, v in flatten_tree(params).items()}   # host copy, once
    family = family_of(hf_config)
    layout = family.layout(family.config(hf_config))
    entries = export_entries(flat, layout, source, family.name)  # (key, shape, dtype, produce)
    shards = _split_shards(entries, max_shard_bytes)
    bar = progress_bar(total=len(entries), unit="tensor", desc="writing safetensors",
                       enabled=progress)
    weight_map, total = {}, 0
    for n, shard in enumerate(shards, 1):
        name = ("model.safetensors" if len(shards) == 1
                else f"model-{n:05d}-of-{len(shards):05d}.safetensors")
        write_safetensors(os.path.join(directory, name), [_ticking(e, bar) for e in shard])
        for key, shape, dt, _ in shard:
            weight_map[key] = name
            total += int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    bar.close()
    if len(shards) > 1:
        _write_json(os.path.join(directory, "model.safetensors.index.json"),
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    dtype_name = _dtype_name(params)
    config = dict(hf_config, **({"dtype": dtype_name} if dtype_name else {}))
    config.pop("torch_dtype", None)
    _write_json(os.path.join(directory, "config.json"), config)
    assets = copy_assets(asset_dirs, directory)
    return {"tensors": len(entries), "bytes": total, "shards": len(shards), "dtype": dtype_name,
            "assets": assets}


def _ticking(entry, bar):
    key, shape, dt, produce = entry

    def produce_and_tick():
        arr = produce()
        bar.update()
        return arr
    return key, shape, dt, produce_and_tick


def _split_shards(entries: list, max_bytes: int) -> list:
    """Greedy, in order: a new shard starts when the next tensor would overflow this one."""
    shards, size = [[]], 0
    for e in entries:
        nbytes = int(np.prod(e[1], dtype=np.int64)) * e[2].itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nbytes
    return shards
