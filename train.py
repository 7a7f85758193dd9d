"""DUET-VLM fine-tuning (docs/API.md §5).

    python train.py --config configs/<name>.yaml [--set key=value ...]

Resumes from the newest checkpoint in `output_dir/checkpoints/` by default.
Exits 0 when training finished, 2 with one `error: ...` line when the config,
data or checkpoint is wrong.
"""
from __future__ import annotations

import argparse
import sys

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fine-tune LLaVA with DUET token reduction (JAX).")
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; dotted keys reach sections (optim.lr=1e-4)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
