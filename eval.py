"""DUET-VLM benchmark evaluation (docs/API.md §4, docs/EVAL.md): `python eval.py run/score/sweep`.

A thin wrapper: the command line lives in `duet_jax.evaluation.cli` (installed as
`duet-eval`, the same program). `score` never imports JAX.
"""
from __future__ import annotations

import sys

from duet_jax.evaluation import cli as _cli
from duet_jax.evaluation.cli import EXIT_ERROR, build_parser as _build_parser  # noqa: F401

PROG = "eval.py"


def build_parser():
    return _build_parser(PROG)


def main(argv=None) -> int:
    return _cli.main(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
