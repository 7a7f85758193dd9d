"""DUET-VLM fine-tuning (docs/API.md §5): `python train.py --config configs/<name>.yaml [--set k=v]`.

A thin wrapper: the command line lives in `duet_jax.training.cli` (installed as
`duet-train`, the same program).
"""
from __future__ import annotations

import sys

from duet_jax.training import cli as _cli
from duet_jax.training.cli import EXIT_ERROR, build_parser as _build_parser  # noqa: F401

PROG = "train.py"


def build_parser():
    return _build_parser(PROG)


def main(argv=None) -> int:
    return _cli.main(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
