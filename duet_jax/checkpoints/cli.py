"""`duet-convert` / `python -m convert`: PyTorch checkpoint <-> duet_jax orbax checkpoint, every
family (LLaVA-1.5, LLaVA-NeXT, Video-LLaVA, Qwen2.5-VL; `duet_jax.checkpoints.convert` does the
work). `python -m duet_jax.checkpoints.cli` runs it too.

    python -m convert --src HF_OR_LLAVA_DIR --dst OUT_DIR [--dtype bfloat16]
    python -m convert --src LLAVA_DIR --vision-tower CLIP_DIR --dst OUT_DIR
    python -m convert --src OUT_DIR --dst HF_DIR --to hf

Every failure prints one line `error: ...` on stderr (`duet_jax.cli.guarded`) and exits
non-zero: 2 for a usage error or a checkpoint problem the user can fix (unknown, missing or
duplicate weights, shape mismatches, a truncated orbax file, an existing --dst, ...), 1 for
the machine (disk full, permission) or anything else. Nothing is left at --dst then.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional

from duet_jax.cli import Parser, guarded, quiet_libraries

PROG = "duet-convert"


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 5GB or 200MB")
    size = int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2) or " "))
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a shard must hold at least one byte")
    return size


def build_parser(prog: str = PROG) -> Parser:
    p = Parser(prog=prog, description=(
        "Convert an HF checkpoint (llava-hf / legacy HF / original LLaVA, LLaVA-NeXT, "
        "Video-LLaVA, Qwen2.5-VL) into a duet_jax orbax checkpoint (config, params, tokenizer "
        "and processor files), or export any of them back to an HF directory with --to hf."))
    p.add_argument("--src", required=True, metavar="DIR",
                   help="HF dir (LLaVA, LLaVA-NeXT, Video-LLaVA, Qwen2.5-VL), original LLaVA "
                        "dir, or a converted duet_jax dir")
    p.add_argument("--dst", required=True, metavar="DIR",
                   help="output dir; must not exist (or be empty); written atomically")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="cast the params to this dtype (default: keep the stored dtype)")
    p.add_argument("--to", choices=("orbax", "hf"), default="orbax",
                   help="orbax: duet_jax checkpoint (default); hf: safetensors that the "
                        "family's transformers class (e.g. LlavaForConditionalGeneration) "
                        "loads with from_pretrained")
    p.add_argument("--vision-tower", metavar="DIR", default=None,
                   help="CLIP checkpoint dir (CLIPVisionModel or CLIPModel) for an original "
                        "LLaVA --src, which names its vision tower instead of holding it")
    p.add_argument("--max-shard-size", type=_size, default="5GB", metavar="SIZE",
                   help="with --to hf: largest safetensors shard, e.g. 5GB or 200MB (default 5GB)")
    return p


def _convert(args) -> int:
    from duet_jax.checkpoints import CheckpointError, convert
    from duet_jax.checkpoints.load import checkpoint_kind

    if args.vision_tower is not None:     # used by original LLaVA sources only: never ignored
        if not os.path.isdir(args.vision_tower):
            raise CheckpointError(f"--vision-tower {args.vision_tower} is not a directory; pass "
                                  "the CLIP checkpoint directory")
        if checkpoint_kind(args.src) != "original":
            raise CheckpointError(f"--vision-tower is for an original LLaVA --src (which names "
                                  f"its CLIP tower); {args.src} holds its vision tower: drop "
                                  "--vision-tower")

    if args.to == "hf":
        info = convert.export_hf(args.src, args.dst, dtype=args.dtype,
                                 vision_tower=args.vision_tower,
                                 max_shard_bytes=args.max_shard_size)
        print(f"exported {info['source']} checkpoint to {args.dst}: {info['tensors']} tensors "
              f"in {info['shards']} shard(s), {info['bytes'] / 2**20:.1f} MiB, "
              f"dtype {info['dtype'] or 'mixed'}")
    else:
        info = convert.convert_to_orbax(args.src, args.dst, dtype=args.dtype,
                                        vision_tower=args.vision_tower)
        print(f"converted {info['source']} checkpoint to {args.dst}: {info['tensors']} "
              f"leaves, {info['bytes'] / 2**20:.1f} MiB, dtype {info['dtype'] or 'mixed'}")
    if info["assets"]:
        print(f"copied {', '.join(info['assets'])}")
    return 0


def main(argv=None, prog: Optional[str] = None) -> int:
    args = build_parser(prog or PROG).parse_args(argv)
    quiet_libraries()     # a failed save ends in our one line, not a hundred of orbax's
    return guarded(_convert, args, undone="no output was written")


if __name__ == "__main__":
    sys.exit(main())
