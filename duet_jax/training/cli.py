"""DUET-VLM fine-tuning (docs/API.md §5): `duet-train`, `python train.py` and
`python -m duet_jax.training.cli` run this module.

    python train.py --config configs/<name>.yaml [--set key=value ...]

Relative paths in a config file resolve against that file's folder (`duet_jax://...`
names a file bundled with the package); `--set` values resolve against the working
directory. Resumes from the newest checkpoint in `output_dir/checkpoints/` by default.
Exits 0 when training finished; 2 with one `error: ...` line when the arguments, config,
data or checkpoint are wrong; 1 when the machine fails (disk full, permission); 143 after
SIGTERM, once the step under way is finished and saved (rerun the command to resume).
"""
from __future__ import annotations

import sys
from typing import Optional

from duet_jax.cli import EXIT_INPUT, Parser, guarded, quiet_libraries

EXIT_ERROR = EXIT_INPUT
EXIT_STOPPED = 143     # 128 + SIGTERM: stopped early, after saving a checkpoint
PROG = "duet-train"


def build_parser(prog: str = PROG) -> Parser:
    p = Parser(prog=prog, description="Fine-tune LLaVA with DUET token reduction (JAX).")
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; dotted keys reach sections (optim.lr=1e-4)")
    return p


def _run(args) -> int:
    from duet_jax.training.config import load_config
    from duet_jax.training.loop import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg)
    if summary["stopped"]:
        print(f"stopped by {summary['stopped']} after step {summary['steps']} of "
              f"{summary['total_steps']}; checkpoint saved in {summary['output_dir']}/checkpoints;"
              " run the same command to resume", file=sys.stderr)
        return EXIT_STOPPED
    loss = summary["final_loss"]
    print(f"done: {summary['steps']} steps, final loss {loss if loss is not None else 'n/a'}, "
          f"output in {summary['output_dir']}")
    return 0


def main(argv=None, prog: Optional[str] = None) -> int:
    args = build_parser(prog or PROG).parse_args(argv)
    quiet_libraries()
    return guarded(_run, args)


if __name__ == "__main__":
    sys.exit(main())
