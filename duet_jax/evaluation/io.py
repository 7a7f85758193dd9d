"""File IO of the evaluation code: JSON / JSON-lines reading and atomic rewrites.

Every problem is raised as `ScoreError`, one line naming the file (and line) and
the fix; `eval.py` prints it and exits 2. Pure Python: importing this never
imports JAX (`eval.py score` runs in a second).
"""
from __future__ import annotations

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


def atomic_write_text(path: str, text: str, prefix: str = ".tmp-") -> None:
    """Atomic rewrite: temp file in the same folder, fsync, os.replace (never half-written)."""
    import tempfile
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
