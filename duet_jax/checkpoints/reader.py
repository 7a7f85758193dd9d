"""Weight files of a checkpoint directory: find them, list them, stream them.

Safetensors are parsed here directly (an 8-byte header length, a JSON header,
then raw little-endian data) so that every tensor is read on its own with one
`readinto`: peak memory stays at one tensor, not one shard, and bfloat16 comes
back as an `ml_dtypes.bfloat16` NumPy array without going through torch.
`.bin` files are opened only with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import warnings
from typing import Iterator, Optional, Sequence

import ml_dtypes
import numpy as np

from duet_jax.errors import InputError

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(InputError):
    """A checkpoint problem the user can fix; the message is one line naming the fix."""


def read_json(path: str) -> dict:
    """A JSON object file (config.json, a marker); any problem is one CheckpointError line."""
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); fix or replace the file") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return d


def check_dir(path: str) -> None:
    """`path` is an existing directory (a checkpoint is always one)."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist; pass an existing checkpoint directory")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds it")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives; `shape`/`dtype` are None until read for `.bin` files."""
    key: str
    file: str
    shape: Optional[tuple] = None
    dtype: Optional[np.dtype] = None
    offsets: Optional[tuple] = None     # safetensors byte range, relative to the data start


@dataclasses.dataclass(frozen=True)
class WeightFiles:
    """All weight files of one directory, in reading order, and every tensor they hold."""
    directory: str
    files: tuple                        # absolute paths, reading order
    tensors: dict                       # key -> TensorInfo
    kind: str                           # "safetensors" | "bin"

    def keys_in(self, file: str) -> list:
        return [t.key for t in self.tensors.values() if t.file == file]


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """-> (header without `__metadata__`, byte offset where the data starts)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path} is not a valid safetensors file (header length "
                                      f"{n} is implausible: corrupt, or another format); "
                                      "re-download it")
            if n > size - 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes, its header alone "
                                      f"needs {n + 8}); re-download it")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read safetensors header of {path}: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for key, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            nbytes = int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {key!r} has a malformed header entry {entry}") from None
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor {key!r} lies outside the file or has the wrong "
                                  "byte size; the file is truncated or corrupt, re-download it")
    return header, 8 + n


def _safetensors_infos(path: str) -> list:
    header, _ = read_safetensors_header(path)
    return [TensorInfo(k, path, tuple(e["shape"]), SAFETENSORS_DTYPES[e["dtype"]],
                       tuple(e["data_offsets"])) for k, e in header.items()]


def _load_index(index_path: str) -> dict:
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read index file {index_path}: {e!r}; re-download it") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"index file {index_path} has an empty or malformed weight_map")
    return weight_map


def find_weight_files(directory: str) -> WeightFiles:
    """Discover the weights of an HF-style directory (index file first, then a single file).

    Every shard named by an index must exist; safetensors headers are all read
    here (cheap), so keys, shapes and dtypes are known before any data is read.
    """
    d = os.path.abspath(directory)
    if not os.path.isdir(d):
        raise CheckpointError(f"{directory} is not a directory; pass a checkpoint directory")
    for index_name, single, kind in (("model.safetensors.index.json", "model.safetensors", "safetensors"),
                                     ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin")):
        index_path = os.path.join(d, index_name)
        if os.path.isfile(index_path):
            weight_map = _load_index(index_path)
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(d, s))]
            if missing:
                raise CheckpointError(
                    f"shard {missing[0]} listed in {index_name} is missing from {directory}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                    + "; download or copy the missing shard")
            files = [os.path.join(d, s) for s in shards]
            if kind == "bin":
                tensors = {k: TensorInfo(k, os.path.join(d, s)) for k, s in weight_map.items()}
            else:
                tensors = _shard_tensors(files, weight_map, index_name)
            return WeightFiles(d, tuple(files), tensors, kind)
        single_path = os.path.join(d, single)
        if os.path.isfile(single_path):
            if kind == "bin":   # memory-mapped where possible, so listing it is cheap
                state = load_bin(single_path)
                tensors = {k: TensorInfo(k, single_path, tuple(v.shape)) for k, v in state.items()}
                return WeightFiles(d, (single_path,), tensors, kind)
            infos = _safetensors_infos(single_path)
            return WeightFiles(d, (single_path,), {t.key: t for t in infos}, kind)
    stray = sorted(n for n in os.listdir(d) if n.endswith((".safetensors", ".bin")))
    hint = (f"found {', '.join(stray[:3])} but no index file naming them" if stray
            else "no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    raise CheckpointError(f"{directory} holds no weights ({hint}); pass a checkpoint directory")


def _shard_tensors(files: Sequence[str], weight_map: dict, index_name: str) -> dict:
    tensors = {}
    for path in files:
        for info in _safetensors_infos(path):
            owner = weight_map.get(info.key)
            if owner is not None and os.path.basename(path) != owner:
                continue      # a stray copy; the index names the real one
            tensors[info.key] = info
    absent = [k for k in weight_map if k not in tensors]
    if absent:
        raise CheckpointError(f"{index_name} lists {absent[0]!r} in {weight_map[absent[0]]}, "
                              "but that shard does not hold it; the shard is stale or corrupt")
    return tensors


def iter_safetensors(path: str, infos: Sequence[TensorInfo]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, fresh array) for `infos` of one file, in file order, one tensor in memory."""
    _, data_start = read_safetensors_header(path)
    with open(path, "rb") as f:
        for info in sorted(infos, key=lambda t: t.offsets[0]):
            arr = np.empty(info.shape, info.dtype)
            f.seek(data_start + info.offsets[0])
            got = f.readinto(arr.reshape(-1).view(np.uint8))
            if got != arr.nbytes:
                raise CheckpointError(f"{path} ended early while reading {info.key!r}; re-download it")
            yield info.key, arr


_LFS_POINTER = b"version https://git-lfs"
_FIX_BIN = "re-download it, or convert it to safetensors where it was made"


def _bin_problem(path: str, error: Exception) -> CheckpointError:
    """What is wrong with a `.bin` torch.load refused, in words (torch's own message is a
    page of advice about weights_only, or a bare "101" / "pop from empty list")."""
    text = str(error)
    glob = re.search(r"unsupported GLOBAL (\S+)", text)
    if glob:
        return CheckpointError(
            f"{path} holds the pickled Python object {glob.group(1)}, and unpickling it could run "
            "code; refusing it (re-save the weights as safetensors from a trusted environment)")
    operand = re.search(r"Unsupported operand (\d+)", text)
    detail = (f"byte {operand.group(1)} is no pickle opcode torch accepts" if operand
              else f"{type(error).__name__}: {' '.join(text.split())[:120] or 'no detail'}")
    return CheckpointError(f"{path} is not a readable PyTorch weight file (truncated or corrupt: "
                           f"{detail}); {_FIX_BIN}")


def load_bin(path: str) -> dict:
    """A `.bin` state dict via `torch.load(weights_only=True)`; never runs pickled code."""
    import torch

    with open(path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes); {_FIX_BIN}")
    if head == _LFS_POINTER:
        raise CheckpointError(f"{path} is a Git LFS pointer, not the weights; run `git lfs pull` "
                              "in its folder (or download the file itself)")
    try:
        with warnings.catch_warnings():   # torch warns on odd archives; the error says it all
            warnings.simplefilter("ignore")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):   # legacy (non-zip) files cannot be memory-mapped
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise                  # permission, I/O: the machine, not the file's content
    except Exception as e:     # torch raises many types for corrupt or hostile archives
        raise _bin_problem(path, e) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return state


def torch_to_numpy(t) -> np.ndarray:
    """A torch CPU tensor -> NumPy (bfloat16 via its bit pattern, as ml_dtypes)."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


def iter_bin(path: str) -> Iterator[tuple[str, np.ndarray]]:
    state = load_bin(path)
    for key in list(state):
        yield key, torch_to_numpy(state.pop(key))


def write_safetensors(path: str, entries: Sequence[tuple], metadata: Optional[dict] = None):
    """Stream tensors into a safetensors file.

    entries: (key, shape, dtype, produce) with `produce()` returning the array;
    arrays are produced one at a time, so memory holds one tensor at a time.
    """
    header, offset = {}, 0
    for key, shape, dtype, _ in entries:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)          # the format wants the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, shape, dtype, produce in entries:
            arr = np.ascontiguousarray(produce(), dtype=np.dtype(dtype))
            if arr.shape != tuple(shape):
                raise ValueError(f"{key}: produced shape {arr.shape}, header says {tuple(shape)}")
            f.write(arr.reshape(-1).view(np.uint8).data)
