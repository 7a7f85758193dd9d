"""DUET-VLM benchmark evaluation (docs/API.md §4, docs/EVAL.md).

`duet-eval`, `python eval.py` and `python -m duet_jax.evaluation.cli` run this module:

    python eval.py run   --model PATH --benchmark pope --questions Q.jsonl --images DIR \\
                         --answers OUT.jsonl [--reduction llava15-duet-64] [--batch-size 8]
    python eval.py score --benchmark pope --answers OUT.jsonl --annotations PATH \\
                         [--questions Q.jsonl] --summary SUMMARY.json
    python eval.py sweep ...   (several reductions of one benchmark; see --help)

`score` never imports JAX (run/sweep import the generation code lazily). Every command
exits 0 when done; otherwise it prints one `error: ...` line (`duet_jax.cli.guarded`) and
exits 2 when an input is wrong (nothing written that blocks the corrected rerun), 1 when
the machine is (disk full, permission).
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional

from duet_jax.cli import EXIT_INPUT, Parser, guarded, quiet_libraries
from duet_jax.evaluation.scoring import BENCHMARKS

EXIT_ERROR = EXIT_INPUT
PROG = "duet-eval"


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score an answer file against the official annotations")
    p.add_argument("--benchmark", required=True, help=", ".join(BENCHMARKS))
    p.add_argument("--answers", required=True,
                   help="answer file in the official format (docs/EVAL.md §0/§7)")
    p.add_argument("--annotations", required=True,
                   help="official annotation file/folder (docs/API.md §4 table)")
    p.add_argument("--questions", help="official question file; checks answers match it one to one "
                                       "(required for pope)")
    p.add_argument("--summary", required=True, help="run summary JSON; this benchmark's entry is merged in")
    p.add_argument("--judge-replies", help="video only: folder of <id>.json judge replies or the combined JSON")
    p.add_argument("--judge-name", help="video only: judge label stored in the summary "
                                        "(default: the --judge-replies file/folder name)")
    p.add_argument("--baseline-summary", help="summary of our own unreduced run, for relative_avg.vs_own_baseline")
    p.set_defaults(handler=_score)


def _add_generation_flags(p) -> None:
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="parameter/compute dtype of the loaded model")
    p.add_argument("--length-bucket", type=int, default=32, metavar="T",
                   help="pad each batch to a multiple of T tokens (fewer compiled shapes; "
                        "padding is masked and changes no answer)")
    p.add_argument("--clip-text-tower", default=None, metavar="DIR",
                   help="HF CLIPModel dir (openai/clip-vit-large-patch14-336) whose text tower "
                        "the llava15-cdpruner-* presets read; default: MODEL/clip_text_tower "
                        "if present")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="generate answers for one benchmark (needs the model and JAX)")
    p.add_argument("--model", required=True, help="HF / LLaVA / converted checkpoint folder")
    p.add_argument("--benchmark", required=True, help=", ".join(BENCHMARKS))
    p.add_argument("--questions", required=True, help="official question file")
    p.add_argument("--images", required=True, help="image (or video) folder")
    p.add_argument("--answers", required=True, help="answer file to write (official format)")
    p.add_argument("--reduction", default=None,
                   help="preset name, a .json/.yaml config file or an inline JSON object; "
                        "default: no reduction")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the benchmark's official value (128, or 1024 for sqa/video)")
    p.add_argument("--save-kept", type=int, default=0, metavar="N",
                   help="write a kept-token picture (PNG) for each of the first N questions")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions")
    _add_generation_flags(p)
    p.set_defaults(handler=_run)


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run + score one benchmark under several reductions")
    p.add_argument("--model", required=True)
    p.add_argument("--benchmark", required=True, help=", ".join(BENCHMARKS))
    p.add_argument("--questions", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--out-dir", required=True, help="answers and summaries go here, one per reduction")
    p.add_argument("--reductions", nargs="+", required=True,
                   help="preset names; 'none' is the unreduced baseline")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--save-kept", type=int, default=0, metavar="N")
    p.add_argument("--limit", type=int, default=None, metavar="N")
    _add_generation_flags(p)
    p.set_defaults(handler=_sweep)


def build_parser(prog: str = PROG) -> Parser:
    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_score(sub)
    _add_sweep(sub)
    return parser


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _report(benchmark: str, block: dict, summary: dict) -> str:
    """Short human-readable lines (rounded); the summary keeps the unrounded values."""
    if benchmark == "pope":
        head = f"POPE F1 mean {_fmt(block['f1_mean'])}  acc mean {_fmt(block['acc_mean'])}"
    elif benchmark == "mme":
        head = (f"MME perception {_fmt(block['perception'])}  cognition {_fmt(block['cognition'])}"
                f"  total {_fmt(block['total'])}")
    elif benchmark == "sqa":
        head = f"SQA accuracy {_fmt(block['accuracy'])}  IMG accuracy {_fmt(block['img_accuracy'])}"
    elif benchmark == "seed":
        head = f"SEED all {_fmt(block['all'])}  image {_fmt(block['image'])}  video {_fmt(block['video'])}"
    elif benchmark == "gqa":
        head = f"GQA accuracy {_fmt(block['accuracy'])}  binary {_fmt(block['binary'])}  open {_fmt(block['open'])}"
    elif benchmark == "textvqa":
        head = f"TextVQA accuracy {_fmt(block['accuracy'])}"
    else:
        head = "; ".join(f"{ds}: lexical {_fmt(b['lexical_accuracy'])} judge({b['judge']}) "
                         f"{_fmt(b['accuracy'])} score {_fmt(b['average_score'])}" for ds, b in block.items())
    rel = summary["relative_avg"]
    if benchmark == "video":
        vid = rel["video"]
        lines = [head, f"relative avg (tgif/msvd/msrvtt): lexical vs own {_fmt(vid['lexical_vs_own_baseline'])}"
                       f"  judge vs own {_fmt(vid['judge_vs_own_baseline'])}"
                       f"  judge vs paper {_fmt(vid['judge_vs_paper_baseline'])}"]
    else:
        lines = [head, f"relative avg (5 benchmarks): vs own {_fmt(rel['vs_own_baseline'])}  "
                       f"vs paper {_fmt(rel['vs_paper_baseline'])}"]
    entries = block.values() if benchmark == "video" else [block]
    lines += [f"deviation: {d}" for entry in entries for d in entry.get("deviations", [])]
    return "\n".join(lines)


def _score(args) -> int:
    from duet_jax.evaluation.io import check_output_path
    from duet_jax.evaluation.scoring import ScoreError, score_benchmark, update_summary

    if args.benchmark not in BENCHMARKS:
        raise ScoreError(f"unknown benchmark {args.benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if args.benchmark != "video" and (args.judge_replies or args.judge_name):
        raise ScoreError("--judge-replies/--judge-name only apply to --benchmark video")
    check_output_path(args.summary, "--summary")   # before the scoring work, not after it
    block = score_benchmark(args.benchmark, args.answers, args.annotations, args.questions,
                            judge_replies=args.judge_replies, judge_name=args.judge_name)
    summary = update_summary(args.summary, args.benchmark, block, args.baseline_summary)
    print(_report(args.benchmark, block, summary))
    print(f"summary: {args.summary}")
    return 0


# run and sweep are imported on use: `score` must not pay for (or need) JAX
def _run(args) -> int:
    return importlib.import_module("duet_jax.evaluation.runner").run_command(args) or 0


def _sweep(args) -> int:
    return importlib.import_module("duet_jax.evaluation.sweep").sweep_command(args) or 0


def main(argv=None, prog: Optional[str] = None) -> int:
    args = build_parser(prog or PROG).parse_args(argv)
    if args.command != "score":
        quiet_libraries()     # a failed load or save ends in our one line, not orbax logging
    return guarded(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
