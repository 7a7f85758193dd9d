"""File IO of the evaluation code: JSON / JSON-lines reading and atomic rewrites.

Every problem is raised as `ScoreError`, one line naming the file (and line) and
the fix; `eval.py` prints it and exits 2. Pure Python: importing this never
imports JAX (`eval.py score` runs in a second).
"""
from __future__ import annotations

import errno
import json
import os
from typing import Any

from duet_jax.errors import InputError


class ScoreError(InputError):
    """Bad scorer input; the message is one line naming the problem and the fix."""


def read_json(path: str) -> Any:
    """Load a whole JSON file; any failure becomes a one-line ScoreError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ScoreError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ScoreError(f"{path}: is a folder, expected a JSON file") from None
    except json.JSONDecodeError as e:
        raise ScoreError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreError(f"{path}: cannot read ({e})") from None


def read_jsonl(path: str) -> list[dict]:
    """Read a JSON-lines file of objects. Blank lines are skipped.

    Returns the records in file order; each gets its 1-based line number under
    the private key `_line` so later errors can point at the line.
    """
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ScoreError(
                        f"{path}:{number}: malformed JSON line ({e.msg}); each line must be one JSON object"
                    ) from None
                if not isinstance(record, dict):
                    raise ScoreError(
                        f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                record["_line"] = number
                records.append(record)
    except FileNotFoundError:
        raise ScoreError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ScoreError(f"{path}: is a folder, expected a JSON-lines file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreError(f"{path}: cannot read ({e})") from None
    return records


def atomic_write_text(path: str, text, prefix: str = ".tmp-") -> None:
    """Atomic rewrite: temp file in the same folder, fsync, os.replace (never half-written).
    `text` may be bytes. An OSError (disk full, read-only) names `path`, not the temp file."""
    import tempfile
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from None
        raise


def check_output_path(path: str, flag: str, folder: bool = False) -> None:
    """Before any side effect: `path` (a file, or with `folder` a directory) can be written.

    ScoreError (exit 2) when the path itself is wrong: a folder where a file belongs (or a
    file where a folder does), a device or pipe, a path under a file. OSError (exit 1) when
    the machine refuses: a read-only file system or no permission there."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if folder and not os.path.isdir(path):
            raise ScoreError(f"{path}: is a file; {flag} must name a folder")
        if not folder and os.path.isdir(path):
            raise ScoreError(f"{path}: is a folder; {flag} must name a file")
        if not folder and not os.path.isfile(path):
            raise ScoreError(f"{path}: is not a regular file (a device or pipe); {flag} must "
                             "name a file")
        target = path
    else:
        target = os.path.dirname(path)
        while not os.path.exists(target):
            target = os.path.dirname(target)
        if not os.path.isdir(target):
            raise ScoreError(f"{path}: lies under the file {target}; {flag} must name a path "
                             "in a folder")
    if not os.access(target, os.W_OK | (os.X_OK if os.path.isdir(target) else 0)):
        raise PermissionError(errno.EACCES, f"cannot write {flag} there (read-only file system "
                                            "or no permission)", path)
