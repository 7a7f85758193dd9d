"""Benchmark scorers (docs/EVAL.md §1-§9). Pure Python: importing this never imports JAX.

    block = score_benchmark("pope", answers="ans.jsonl", annotations="coco/",
                            questions="llava_pope_test.jsonl")
"""
from __future__ import annotations

from . import gqa, mme, pope, seed, sqa, textvqa, video
from .common import ScoreError
from .summary import SUMMARY_KEYS, update_summary

BENCHMARKS = ("pope", "textvqa", "gqa", "mme", "sqa", "seed", "video")
_SCORERS = {"pope": pope.score, "textvqa": textvqa.score, "gqa": gqa.score, "mme": mme.score,
            "sqa": sqa.score, "seed": seed.score}


def score_benchmark(benchmark: str, answers: str, annotations: str, questions: str | None = None,
                    judge_replies: str | None = None, judge_name: str | None = None) -> dict:
    """Score one answer file; returns the benchmark's summary block (for video:
    {dataset: block}). Raises ScoreError on bad input."""
    if benchmark not in BENCHMARKS:
        raise ScoreError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if benchmark == "video":
        return video.score(answers, annotations, questions, judge_replies=judge_replies,
                           judge_name=judge_name)
    if judge_replies is not None:
        raise ScoreError(f"--judge-replies only applies to --benchmark video, not {benchmark}")
    return _SCORERS[benchmark](answers, annotations, questions)


__all__ = ["BENCHMARKS", "SUMMARY_KEYS", "ScoreError", "score_benchmark", "update_summary"]
