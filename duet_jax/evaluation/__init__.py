"""Benchmark evaluation (docs/EVAL.md): question files, prompts, answer files and scorers.

Importing this package must not import JAX: `eval.py score` runs in about a second.
The generation loop (`runner`) is imported lazily by `eval.py run` only.
"""
from __future__ import annotations

from .scoring import BENCHMARKS, ScoreError, score_benchmark, update_summary

__all__ = ["BENCHMARKS", "ScoreError", "score_benchmark", "update_summary"]
