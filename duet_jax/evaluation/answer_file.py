"""Resumable answer files: what is already answered, and the final question-order rewrite.

`eval.py run` appends one line per answer and flushes it, so a killed run leaves
every finished answer on disk and at most one partial last line. On restart:

    state = resume_state(path, questions)     # cuts a partial last line off the file
    pending = [i for i in range(n) if not state.answered[i]]
    ... append answers for `pending` ...
    finalize(path, questions)                 # rewrite in question-file order

Lines are matched to questions by `question_key` as a multiset (TextVQA keys are
not unique), so a line that matches no question of the file means the answer file
belongs to another question file: that is an error, never silently mixed.
Pure Python: no JAX import.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os

from .questions import Question, question_key
from .io import ScoreError, atomic_write_text

_FIX = "pass the question file it was written for, or a new --answers path"


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """answered[i]: question i already has a line; lines: the complete raw lines (with
    "\\n"), file order; dropped_partial: a partial last line was cut off the file."""
    answered: list
    lines: list
    dropped_partial: bool


def _record_key(path: str, number: int, record) -> object:
    if not isinstance(record, dict):
        raise ScoreError(f"{path}:{number}: expected an answer object, got "
                         f"{type(record).__name__}; {_FIX}")
    if "pred" in record and "id" in record:      # video answer line
        key = record["id"]
    elif "question_id" in record and "prompt" in record:
        key = (record["question_id"], record["prompt"])
    else:
        raise ScoreError(f"{path}:{number}: not an answer line (needs question_id and prompt, "
                         f"or id and pred); {_FIX}")
    try:
        hash(key)
    except TypeError:
        raise ScoreError(f"{path}:{number}: question id must be a string or an integer") from None
    return key


def _read_lines(path: str) -> tuple[list, list, bool]:
    """(raw complete lines, parsed records, dropped_partial). A last line that does not
    parse is what a kill mid-write leaves: it is truncated away on disk."""
    with open(path, "rb") as f:
        data = f.read()
    raw = data.splitlines(keepends=True)
    lines, records, dropped = [], [], False
    for number, line in enumerate(raw, start=1):
        is_last = number == len(raw)
        text = line.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            if is_last:
                dropped = True
                break
            raise ScoreError(f"{path}:{number}: malformed answer line (not JSON); a killed run "
                             f"only leaves a bad last line, so this file was edited: fix or "
                             f"delete that line, or use a new --answers path") from None
        if not text.endswith("\n"):
            text += "\n"          # complete record cut just before its newline
        lines.append(text)
        records.append((number, record))
    if dropped or (raw and not raw[-1].endswith(b"\n")):
        # Rewrite the kept prefix so the next append starts on a fresh line.
        _replace_file(path, "".join(lines))
    return lines, records, dropped


def _replace_file(path: str, text: str) -> None:
    """Atomic rewrite: temp file in the same folder, fsync, os.replace."""
    atomic_write_text(path, text, prefix=".answers-")


def resume_state(path: str, questions: list[Question]) -> ResumeState:
    """Which questions an existing answer file already answers (all False if none).

    Raises ScoreError when a line matches no (remaining) question of `questions`:
    the file was written for another question file, or answers a question twice.
    """
    if not os.path.exists(path):
        return ResumeState([False] * len(questions), [], False)
    if os.path.isdir(path):
        raise ScoreError(f"{path}: is a folder; --answers must name a file")
    lines, records, dropped = _read_lines(path)
    want = collections.Counter(question_key(q) for q in questions)
    have = collections.Counter()
    for number, record in records:
        key = _record_key(path, number, record)
        have[key] += 1
        if have[key] > want[key]:
            what = "answers no question" if want[key] == 0 else "answers a question twice"
            shown = key if not isinstance(key, tuple) else key[0]
            raise ScoreError(f"{path}:{number}: line {what} of this question file "
                             f"(question_id {shown!r}); {_FIX}")
    answered = []
    for q in questions:
        key = question_key(q)
        answered.append(have[key] > 0)
        if have[key] > 0:
            have[key] -= 1
    return ResumeState(answered, lines, dropped)


def finalize(path: str, questions: list[Question]) -> int:
    """Rewrite the answer file in question-file order (lines unchanged). Returns the
    number of lines. Lines of equal key keep their relative order."""
    lines, records, _ = _read_lines(path)
    by_key: dict = collections.defaultdict(collections.deque)
    for (number, record), line in zip(records, lines):
        by_key[_record_key(path, number, record)].append(line)
    ordered = []
    for q in questions:
        bucket = by_key.get(question_key(q))
        if bucket:
            ordered.append(bucket.popleft())
    leftover = sum(len(b) for b in by_key.values())
    if leftover:
        raise ScoreError(f"{path}: {leftover} line(s) match no question; {_FIX}")
    text = "".join(ordered)
    with open(path, encoding="utf-8") as f:
        unchanged = f.read() == text
    if not unchanged:
        _replace_file(path, text)
    return len(ordered)


def check_run_settings(meta_path: str, settings: dict) -> None:
    """Refuse to resume an answer file written with other settings (model, reduction,
    max_new_tokens, benchmark, dtype): its answers would be silently mixed."""
    if not os.path.exists(meta_path):
        return
    try:
        with open(meta_path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, json.JSONDecodeError):
        return      # an unreadable sidecar is rewritten; the key check still applies
    for field in ("benchmark", "model", "reduction", "max_new_tokens", "dtype"):
        if field in stored and stored[field] != settings.get(field):
            raise ScoreError(
                f"{meta_path}: the existing answers were generated with {field}="
                f"{json.dumps(stored[field])}, not {json.dumps(settings.get(field))}; rerun with "
                f"the same settings to resume, or use a new --answers path")


def write_run_settings(meta_path: str, settings: dict) -> None:
    _replace_file(meta_path, json.dumps(settings, indent=2) + "\n")
