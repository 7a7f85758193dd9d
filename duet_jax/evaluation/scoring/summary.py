"""The run summary JSON (docs/EVAL.md §9): one file per run, one key per benchmark.

`eval.py score` merges each benchmark's block into the run's summary file (so the
five image benchmarks of one run end up side by side), recomputes `relative_avg`,
and replaces the file atomically: a temp file in the same folder + os.replace, so a
reader never sees a half-written summary and an error leaves the old file intact.
"""
from __future__ import annotations

import json
import os

from ..io import ScoreError, atomic_write_text, read_json
from .relative import IMAGE_BENCHMARKS, relative_block

BENCHMARK_KEYS = ("pope", "textvqa", "gqa", "mme", "sqa", "seed", "video")
SUMMARY_KEYS = BENCHMARK_KEYS + ("relative_avg",)
UNITS = ("percent (0-100) for every accuracy/precision/recall/F1/ratio; MME scores in points "
         "(subtask max 200, perception max 2000, cognition max 800); video average_score 0-5")


def load_summary(path: str, must_exist: bool = False) -> dict:
    """An existing summary, or {} when there is none yet (unless must_exist)."""
    if not os.path.exists(path):
        if must_exist:
            raise ScoreError(f"{path}: summary not found")
        return {}
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ScoreError(f"{path}: not a summary (expected a JSON object)")
    return summary


def merge_block(summary: dict, benchmark: str, block: dict, own_baseline: dict | None = None) -> dict:
    """A new summary with `block` stored under `benchmark` and relative_avg recomputed.
    Video blocks are {dataset: entry} and merge per dataset."""
    if benchmark not in BENCHMARK_KEYS:
        raise ScoreError(f"unknown benchmark {benchmark!r}")
    merged = dict(summary)
    if benchmark == "video":
        merged["video"] = {**(summary.get("video") or {}), **block}
    else:
        merged[benchmark] = block
    merged["units"] = UNITS
    merged["relative_avg"] = relative_block(merged, own_baseline)
    return merged


def write_atomic(path: str, summary: dict) -> None:
    """Write JSON to a temp file next to `path`, then os.replace it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ScoreError(f"{path}: the summary's folder does not exist; create it first")
    try:
        text = json.dumps(summary, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise ScoreError(f"summary is not valid JSON ({e})") from None
    atomic_write_text(path, text, prefix=".summary-")


def baseline_snapshot(baseline: dict) -> dict:
    """The parts of an own-baseline summary that relative_avg needs (kept in the summary
    so later `score` calls without --baseline-summary still compare against it)."""
    snapshot = {b: {k: baseline[b].get(k) for k in ("accuracy", "total", "f1_mean")}
                for b in IMAGE_BENCHMARKS if isinstance(baseline.get(b), dict)}
    video = baseline.get("video")
    if isinstance(video, dict):
        snapshot["video"] = {ds: {k: e.get(k) for k in ("lexical_accuracy", "accuracy", "judge")}
                             for ds, e in video.items() if isinstance(e, dict)}
    return snapshot


def update_summary(path: str, benchmark: str, block: dict, baseline_path: str | None = None) -> dict:
    """Load (or start) the summary at `path`, merge `block`, write it atomically.

    Without `baseline_path` the own-baseline snapshot stored by an earlier call is reused."""
    summary = load_summary(path)
    if baseline_path:
        own = baseline_snapshot(load_summary(baseline_path, must_exist=True))
        source = os.path.abspath(baseline_path)
    else:
        stored = (summary.get("relative_avg") or {}).get("own_baseline") or {}
        own, source = stored.get("summary"), stored.get("path")
    merged = merge_block(summary, benchmark, block, own)
    merged["relative_avg"]["own_baseline"] = {"path": source, "summary": own} if own else None
    write_atomic(path, merged)
    return merged
