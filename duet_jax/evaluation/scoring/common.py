"""Shared helpers of the benchmark scorers: file reading, answer matching, errors.

File reading lives in `duet_jax.evaluation.io`. Every problem with the inputs is
raised as `ScoreError` with one line that names
the file (and line) and says what to fix; `eval.py score` prints it and exits 2.
Pure Python (json, os): the scorers must never import JAX.
"""
from __future__ import annotations

import collections
import os
from typing import Any, Callable, Hashable, Iterable, Sequence

from ..io import ScoreError, read_json, read_jsonl  # noqa: F401  (the scorers' one import)

# Suffixes appended to the question text by the official question files (docs/EVAL.md §0).
SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


def where(path: str, record: dict) -> str:
    """'file:line' for a record read by read_jsonl (just the file otherwise)."""
    line = record.get("_line")
    return f"{path}:{line}" if line is not None else path


_ID_FIELDS = frozenset({"question_id", "id"})


def require_fields(path: str, records: Iterable[dict], fields: Sequence[str]) -> None:
    """Raise naming file:line and the field when a record lacks a required field."""
    for record in records:
        for field in fields:
            if field not in record:
                raise ScoreError(f"{where(path, record)}: missing field '{field}'")
            value = record[field]
            if field in _ID_FIELDS and (isinstance(value, bool) or not isinstance(value, (str, int))):
                raise ScoreError(f"{where(path, record)}: field '{field}' must be a string or an "
                                 f"integer, got {type(value).__name__}")


def require_str(path: str, records: Iterable[dict], field: str) -> None:
    """Raise when `field` is not a string (a model output must be text)."""
    for record in records:
        if not isinstance(record.get(field), str):
            raise ScoreError(
                f"{where(path, record)}: field '{field}' must be a string, "
                f"got {type(record.get(field)).__name__}")


def require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise ScoreError(f"{path}: not a folder; --annotations must name {what}")


def show_ids(ids: Iterable[Any], limit: int = 3) -> str:
    """Compact, repr-based listing (so 5 and '5' look different)."""
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def index_unique(path: str, records: Sequence[dict], key: Callable[[dict], Hashable],
                 what: str = "question_id") -> dict:
    """Map key -> record, raising on a duplicate key (a duplicated answer line
    would otherwise silently overwrite its twin)."""
    index: dict = {}
    for record in records:
        k = key(record)
        if k in index:
            raise ScoreError(
                f"{where(path, record)}: duplicate {what} {k!r} (first at line "
                f"{index[k].get('_line')}); each question must be answered once")
        index[k] = record
    return index


def match_answers(answers_path: str, answers: Sequence[dict], questions_path: str,
                  questions: Sequence[dict], key: Callable[[dict], Hashable],
                  answer_key: Callable[[dict], Hashable] | None = None) -> None:
    """Require a one-to-one match between answer lines and question records.

    Keys are compared as a multiset (TextVQA's key is not unique per question).
    Raises naming the missing / extra keys; ids are compared with their type, so
    an int id answered with a str id is both missing and extra.
    """
    answer_key = answer_key or key
    want = collections.Counter(key(q) for q in questions)
    have = collections.Counter(answer_key(a) for a in answers)
    missing = list((want - have).elements())
    extra = list((have - want).elements())
    if missing:
        raise ScoreError(
            f"{answers_path}: {len(missing)} question(s) of {questions_path} have no answer line "
            f"(e.g. {show_ids(missing)}); finish the run or pass the question file it used")
    if extra:
        raise ScoreError(
            f"{answers_path}: {len(extra)} answer line(s) match no question of {questions_path} "
            f"(e.g. {show_ids(extra)}); the answers come from a different question file")


def percent(numerator: float, denominator: float) -> float | None:
    """numerator/denominator*100 in the official order of operations; None if 0/0."""
    return numerator / denominator * 100 if denominator else None


def read_answer_lines(answers_path: str) -> list:
    """Answer-file lines with string `question_id`/`prompt`/`text` fields; none is an error."""
    answers = read_jsonl(answers_path)
    require_fields(answers_path, answers, ("question_id", "prompt", "text"))
    require_str(answers_path, answers, "text")
    require_str(answers_path, answers, "prompt")
    if not answers:
        raise ScoreError(f"{answers_path}: no answer lines to score")
    return answers
