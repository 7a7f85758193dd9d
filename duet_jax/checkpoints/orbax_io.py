"""Save and restore the parameter pytree with orbax, optionally straight onto a mesh.

A converted duet_jax directory (what `python -m convert` writes) is:

    config.json                 the HF config dict of the model (defaults filled in)
    duet_jax_checkpoint.json    marker: {"format": <family format>, "params": "params", ...}
    params/                     orbax checkpoint of the param pytree
    <tokenizer / processor files>
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Any, Mapping, Optional

import numpy as np

from duet_jax.checkpoints.reader import CheckpointError, read_json
from duet_jax.dtypes import DTYPES, parse_dtype

MARKER = "duet_jax_checkpoint.json"     # marks a converted directory
PARAMS_SUBDIR = "params"


def flatten_tree(tree: Mapping, prefix: tuple = ()) -> dict:
    """Nested dicts -> {path tuple: leaf}."""
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(flatten_tree(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def unflatten_tree(flat: Mapping) -> dict:
    """{path tuple: leaf} -> nested dicts."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return tree


def _names(paths) -> str:
    paths = sorted(paths)
    text = ", ".join("/".join(p) for p in paths[:3])
    return text + (f" (and {len(paths) - 3} more)" if len(paths) > 3 else "")


def sharding_lookup(shardings: Optional[Mapping], paths) -> dict:
    """{path: Sharding or None}; a `shardings` tree must hold exactly the params' leaves."""
    if shardings is None:
        return {p: None for p in paths}
    flat = flatten_tree(shardings)
    missing, extra = set(paths) - set(flat), set(flat) - set(paths)
    if missing or extra:
        what = f"lacks {_names(missing)}" if missing else f"has extra leaves {_names(extra)}"
        raise CheckpointError(f"the shardings tree does not match the params: it {what}; "
                              "build it from the params' structure (e.g. jax.tree.map over them)")
    return flat


def cast_dtype(dtype) -> Optional[np.dtype]:
    """'bfloat16', jnp.bfloat16, np.float32, ... -> NumPy dtype (None stays None); names go
    through the package's one parser (`duet_jax.dtypes`)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(parse_dtype(dtype))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    except TypeError:
        raise CheckpointError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    if not np.issubdtype(dt, np.floating) and dt != np.dtype(DTYPES["bfloat16"]):
        raise CheckpointError(f"dtype {dtype!r} is not a floating type; use float32, bfloat16 or float16")
    return dt


# TensorStore folds the OS error into its message: "... [os_error_code='28']"
_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_ARRAY_PATH = re.compile(r"'path': '([^']+?)/?',\s*\}, 'metadata'")


def orbax_failure(error: Exception, directory: str, reading: bool) -> Exception:
    """The one-line error for an orbax/TensorStore failure at `directory`: an OS error it
    wraps (disk full, permission) as that OSError naming the directory; a failed read as a
    CheckpointError saying the data is truncated or corrupt and how to get it back; anything
    else unchanged. Raise the result `from None`: the TensorStore spec helps no user."""
    text = str(error)
    code = _OS_ERROR_CODE.search(text)
    if code and int(code.group(1)) in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT,
                                       errno.EPERM, errno.EIO):
        number = int(code.group(1))
        return OSError(number, os.strerror(number), directory)
    if reading and ("Encountered error while reading" in text or "DATA_LOSS" in text
                    or "NOT_FOUND" in text or "OUT_OF_RANGE" in text):
        array = _ARRAY_PATH.search(text)
        which = f", array {array.group(1)}" if array else ""
        return CheckpointError(f"cannot read the orbax params ({directory}{which}): a data file "
                               "is truncated, corrupt or missing; convert the checkpoint again "
                               "(python -m convert --src <HF dir> --dst <new dir>)")
    return error


@contextlib.contextmanager
def _held_chatter():
    """Hold back what orbax's worker threads print while saving or restoring: on a failed
    save (disk full) each thread logs the same error and prints an "Event loop is closed"
    traceback, a hundred lines before the one line the caller reports. Printed after a
    success, or with DUET_DEBUG=1; dropped otherwise."""
    import io
    import logging
    import sys

    from duet_jax.cli import debug

    held, real = io.StringIO(), sys.stderr
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [log.level for log in loggers]
    sys.stderr = held
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok or debug():
            real.write(held.getvalue())
        else:
            _drop_closed_loop_reports()
        sys.stderr = real
        for log, level in zip(loggers, levels):
            log.setLevel(level)


_CLOSED_LOOP_REPORTS = [0]     # how many late "Event loop is closed" reports were dropped


def _closed_loop(error) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _drop_closed_loop_reports(settle_s: float = 0.3, limit_s: float = 3.0) -> None:
    """After a failed save, TensorStore's I/O threads still finishing call back into orbax's
    closed event loop; Python reports each `RuntimeError('Event loop is closed')` through
    sys.excepthook, tracebacks after the caller's one line. Those reports (only those) are
    dropped from then on, and this waits (at most `limit_s`) until none came for `settle_s`,
    so none races the interpreter's exit, where no hook applies any more."""
    import sys

    previous = sys.excepthook
    if not getattr(previous, "drops_closed_loop", False):
        def hook(kind, error, tb):
            if _closed_loop(error):
                _CLOSED_LOOP_REPORTS[0] += 1
            else:
                previous(kind, error, tb)
        hook.drops_closed_loop = True
        sys.excepthook = hook
    seen = [_CLOSED_LOOP_REPORTS[0]]

    def new_reports() -> bool:
        fresh, seen[0] = _CLOSED_LOOP_REPORTS[0] != seen[0], _CLOSED_LOOP_REPORTS[0]
        return fresh
    wait_until_quiet(new_reports, settle_s, limit_s)


def wait_until_quiet(activity, settle_s: float = 0.3, limit_s: float = 3.0) -> None:
    """Poll `activity()` (True: something happened since the last call) until it stays False
    for `settle_s`, at most `limit_s`: how a failed orbax save waits out TensorStore's I/O
    threads, which cannot be joined from Python."""
    import time

    start = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s and time.monotonic() - start < limit_s:
        time.sleep(0.05)
        if activity():
            quiet_since = time.monotonic()


def save_params(directory: str, params: Mapping) -> None:
    """Write `params` as an orbax checkpoint at `directory` (must not exist).

    Pass jax arrays: orbax makes its own jax copy of NumPy leaves (2x memory).
    Bytes in flight are capped at the largest leaf (orbax needs at least that),
    so writing adds O(largest leaf) on top of the params themselves.
    """
    import orbax.checkpoint as ocp

    largest = max((int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                   for x in flatten_tree(params).values()), default=0)
    in_flight_gb = max(largest + 1, 64 * 2 ** 20) / 1e9   # orbax counts GB as 1e9 bytes
    handler = ocp.StandardCheckpointHandler(save_concurrent_gb=in_flight_gb)
    try:
        with _held_chatter():
            with ocp.Checkpointer(handler) as ckptr:
                ckptr.save(os.path.abspath(directory), args=ocp.args.StandardSave(params))
    except Exception as e:   # TensorStore wraps ENOSPC etc. in ValueError / Exception
        failure = orbax_failure(e, directory, reading=False)
        if failure is e:
            raise
        raise failure from None


def params_metadata(directory: str) -> dict:
    """{path: (shape, dtype)} of a saved params checkpoint, without reading any array."""
    import orbax.checkpoint as ocp

    fix = "convert the checkpoint again (python -m convert --src <HF dir> --dst <new dir>)"
    if not os.path.isdir(directory):
        raise CheckpointError(f"the orbax params folder {directory} is missing; {fix}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(os.path.abspath(directory))
    except Exception as e:  # orbax raises assorted types for a damaged directory
        raise CheckpointError(f"cannot read the orbax params at {directory}: "
                              f"{' '.join(str(e).split())[:200]}; {fix}") from None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping) or not tree:
        raise CheckpointError(f"cannot read the orbax params at {directory}: its _METADATA is "
                              f"missing or corrupt; {fix}")
    return {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in flatten_tree(tree).items()}


def restore_params(directory: str, dtype=None, shardings: Optional[Mapping] = None) -> dict:
    """Read a params checkpoint as jax arrays.

    dtype: cast float leaves to it while restoring (None keeps the stored dtype).
    shardings: a pytree of `jax.sharding.Sharding` matching the params; each leaf
    is restored directly with its sharding (default: the first local device).
    """
    import jax
    import orbax.checkpoint as ocp

    meta = params_metadata(directory)
    placement = sharding_lookup(shardings, meta)
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    dt = cast_dtype(dtype)
    target = {p: jax.ShapeDtypeStruct(shape, dt if dt is not None else stored,
                                      sharding=placement[p] or default)
              for p, (shape, stored) in meta.items()}
    try:
        with _held_chatter(), ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(os.path.abspath(directory), unflatten_tree(target))
    except Exception as e:   # TensorStore raises a bare Exception for a truncated file
        failure = orbax_failure(e, directory, reading=True)
        if failure is e:
            raise
        raise failure from None


def leaf_nbytes(tree: Mapping[Any, Any]) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in flatten_tree(tree).values())


def is_converted(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def read_converted(path: str, formats) -> tuple:
    """-> (format, config.json dict, params dir) of a converted dir whose format is in `formats`."""
    marker = read_json(os.path.join(path, MARKER))
    fmt = marker.get("format")
    if fmt not in formats:
        raise CheckpointError(f"{path}/{MARKER} has format {fmt!r}, expected "
                              + " or ".join(repr(f) for f in formats))
    params_dir = os.path.join(path, marker.get("params", PARAMS_SUBDIR))
    return fmt, read_json(os.path.join(path, "config.json")), params_dir
