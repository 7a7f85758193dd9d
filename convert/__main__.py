"""`python -m convert`: PyTorch checkpoint <-> duet_jax orbax checkpoint (docs/API.md §3).

    python -m convert --src HF_OR_LLAVA_DIR --dst OUT_DIR [--dtype bfloat16]
    python -m convert --src OUT_DIR --dst HF_DIR --to hf

A thin wrapper: the command line lives in `duet_jax.checkpoints.cli` (installed as
`duet-convert`, the same program).
"""
from __future__ import annotations

import sys

from duet_jax.checkpoints import cli as _cli

PROG = "python -m convert"


def build_parser():
    return _cli.build_parser(PROG)


def main(argv=None) -> int:
    return _cli.main(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
