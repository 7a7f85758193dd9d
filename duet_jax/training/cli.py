"""DUET-VLM fine-tuning (docs/API.md §5): `duet-train`, `python train.py` and
`python -m duet_jax.training.cli` run this module.

    python train.py --config configs/<name>.yaml [--set key=value ...]

Relative paths in a config file resolve against that file's folder (`duet_jax://...`
names a file bundled with the package); `--set` values resolve against the working
directory. Resumes from the newest checkpoint in `output_dir/checkpoints/` by default.
Exits 0 when training finished, 2 with one `error: ...` line when the arguments,
config, data or checkpoint are wrong.
"""
from __future__ import annotations

import sys
from typing import Optional

from duet_jax.cli import Parser

EXIT_ERROR = 2
PROG = "duet-train"


def build_parser(prog: str = PROG) -> Parser:
    p = Parser(prog=prog, description="Fine-tune LLaVA with DUET token reduction (JAX).")
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; dotted keys reach sections (optim.lr=1e-4)")
    return p


def main(argv=None, prog: Optional[str] = None) -> int:
    args = build_parser(prog or PROG).parse_args(argv)
    from duet_jax.checkpoints.reader import CheckpointError
    from duet_jax.data.llava_json import RecordError
    from duet_jax.training.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        from duet_jax.training.loop import train

        summary = train(cfg)
    # Bad input (config, data, checkpoint) gets one line; anything else keeps its traceback.
    except (ConfigError, RecordError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(f"done: {summary['steps']} steps, final loss "
          f"{summary['final_loss'] if summary['final_loss'] is not None else 'n/a'}, "
          f"output in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
