"""`eval.py sweep`: one benchmark under several reductions, scored and compared.

    python eval.py sweep --model M --benchmark pope --questions Q --images DIR \\
        --annotations coco/ --out-dir OUT --reductions none llava15-duet-192 llava15-duet-64

For each reduction (the unreduced `none` first, when listed) it runs the
benchmark (`runner.run`, resumable: OUT/answers/<name>.jsonl), scores it with
the official-rule scorers into OUT/summaries/<name>.json (against `none` as the
own baseline), then writes OUT/sweep.md (table), OUT/sweep.json and OUT/sweep.png
(the reported number against the average visual tokens per LM layer of
`average_visual_tokens`; the unreduced model sits at the patch count, 576 for
LLaVA-1.5). With --limit N the scorers get the first N questions (and, for
POPE, the matching labels), written to OUT/subset/.
"""
from __future__ import annotations

import io
import json
import os

from . import media, runner
from .questions import load_questions
from .scoring import score_benchmark, update_summary
from .io import ScoreError, atomic_write_text, check_output_path, read_json

# The reported number of each benchmark (docs/EVAL.md §1-§7) and a few secondary ones.
HEADLINE = {"pope": ("f1_mean", "POPE F1"), "textvqa": ("accuracy", "TextVQA acc"),
            "gqa": ("accuracy", "GQA acc"), "mme": ("total", "MME P+C"),
            "sqa": ("accuracy", "SQA acc"), "seed": ("all", "SEED all"),
            "video": ("lexical_accuracy", "video lexical acc (mean)")}
SECONDARY = {"pope": ("acc_mean",), "gqa": ("binary", "open"), "mme": ("perception", "cognition"),
             "sqa": ("img_accuracy",), "seed": ("image", "video")}


def headline(benchmark: str, block: dict):
    key = HEADLINE[benchmark][0]
    if benchmark == "video":
        values = [b.get(key) for b in block.values()
                  if isinstance(b, dict) and b.get(key) is not None]
        return sum(values) / len(values) if values else None
    return block.get(key)


def _secondary(benchmark: str, block: dict) -> str:
    parts = []
    for key in SECONDARY.get(benchmark, ()):
        value = block.get(key)
        parts.append(f"{key} {value:.2f}" if isinstance(value, (int, float)) else f"{key} n/a")
    return ", ".join(parts)


def _jsonl_head(path: str, n: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(line if line.endswith("\n") else line + "\n")
                if len(out) == n:
                    break
    return out


def subset_inputs(benchmark: str, questions_path: str, annotations: str, scope: list,
                  out_dir: str) -> tuple[str, str]:
    """Question file (and POPE labels) restricted to `scope`, the first N questions, in
    the official formats, so the scorers score exactly what was run."""
    folder = os.path.join(out_dir, "subset")
    os.makedirs(folder, exist_ok=True)
    n = len(scope)
    if benchmark == "sqa":
        path = os.path.join(folder, "questions.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(read_json(questions_path)[:n], f)
        return path, annotations
    if benchmark == "video":
        q_file = os.path.join(questions_path, "test_q.json") if os.path.isdir(questions_path) \
            else questions_path
        wanted = {q.question_id for q in scope}
        sub = os.path.join(folder, os.path.basename(os.path.dirname(os.path.abspath(q_file))))
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, "test_q.json"), "w", encoding="utf-8") as f:
            json.dump([q for q in read_json(q_file) if q.get("question_id") in wanted], f)
        with open(os.path.join(sub, "test_a.json"), "w", encoding="utf-8") as f:
            json.dump(read_json(os.path.join(os.path.dirname(q_file), "test_a.json")), f)
        return sub, annotations
    path = os.path.join(folder, "questions.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(_jsonl_head(questions_path, n))
    if benchmark != "pope":
        return path, annotations
    # POPE pairs labels with a split's questions by position: the first k questions of a
    # split take the first k labels of coco_pope_<split>.json.
    labels_dir = os.path.join(folder, "coco")
    os.makedirs(labels_dir, exist_ok=True)
    counts: dict = {}
    for q in scope:
        counts[q.category] = counts.get(q.category, 0) + 1
    for split, k in counts.items():
        src = os.path.join(annotations, f"coco_pope_{split}.json")
        if not os.path.isfile(src):
            raise ScoreError(f"{annotations}: no coco_pope_{split}.json for split {split!r}")
        with open(os.path.join(labels_dir, f"coco_pope_{split}.json"), "w", encoding="utf-8") as f:
            f.writelines(_jsonl_head(src, k))
    return path, labels_dir


def _names(reductions: list[str]) -> list[tuple[str, object]]:
    seen, out = set(), []
    for value in reductions:
        red = runner.parse_reduction(value)
        name = "none" if red is None else red.name
        if name in seen:
            raise ScoreError(f"--reductions lists {name!r} twice; give each reduction once")
        seen.add(name)
        out.append((name, red))
    return sorted(out, key=lambda item: item[0] != "none")     # baseline first (stable)


def write_table(path: str, benchmark: str, rows: list[dict]) -> None:
    metric = HEADLINE[benchmark][1]
    lines = [f"| reduction | avg visual tokens / layer | image tokens into LM | {metric} | "
             "vs none (%) | other | tok/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        value = "n/a" if r["value"] is None else f"{r['value']:.2f}"
        rel = "n/a" if r["relative_to_none"] is None else f"{r['relative_to_none']:.1f}"
        speed = "n/a (resumed)" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
        lines.append(f"| {r['reduction']} | {r['avg_visual_tokens']:.1f} | "
                     f"{r['lm_image_tokens']} | {value} | {rel} | {r['other']} | {speed} |")
    atomic_write_text(path, "\n".join(lines) + "\n", prefix=".sweep-")


def write_plot(path: str, benchmark: str, rows: list[dict], model_id: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points = [r for r in rows if r["value"] is not None]
    reduced = [r for r in points if r["reduction"] != "none"]
    if reduced:
        ax.plot([r["avg_visual_tokens"] for r in reduced], [r["value"] for r in reduced], "o",
                color="tab:blue", label="reduced")
    for k, r in enumerate(sorted(points, key=lambda r: r["avg_visual_tokens"])):
        # Alternate above / below so presets at nearly equal budgets stay readable.
        ax.annotate(r["reduction"], (r["avg_visual_tokens"], r["value"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 5 if k % 2 == 0 else -11))
    base = next((r for r in points if r["reduction"] == "none"), None)
    if base is not None:
        ax.plot([base["avg_visual_tokens"]], [base["value"]], "*", markersize=12, color="tab:red",
                label="unreduced")
        ax.axhline(base["value"], color="tab:red", linestyle="--", linewidth=0.8)
    ax.set_xlabel("average visual tokens per LM layer")
    ax.set_ylabel(HEADLINE[benchmark][1])
    ax.set_title(f"{benchmark}: accuracy vs visual tokens ({model_id})")
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    atomic_write_text(path, png.getvalue(), prefix=".sweep-")


def sweep_command(args) -> int:
    runner.check_args(args.benchmark, args.batch_size, args.max_new_tokens, args.limit,
                      args.save_kept, getattr(args, "length_bucket", None))
    reductions = _names(args.reductions)
    out_dir = args.out_dir
    # every input is checked (and the model loaded) before the first folder is made
    check_output_path(out_dir, "--out-dir", folder=True)
    questions = load_questions(args.benchmark, args.questions)
    scope = questions if args.limit is None else questions[:args.limit]
    media.check_media(args.benchmark, args.images, scope)
    model = runner.load_model(args.model, getattr(args, "dtype", None) or "float32",
                              getattr(args, "clip_text_tower", None))
    for name, red in reductions:
        if red is not None:
            try:
                model.reduction(red, media=runner.run_media(args.benchmark))
            except ValueError as e:
                raise ScoreError(f"--reductions {name}: {e}") from None
    for sub in ("answers", "summaries"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    q_path, annotations = (args.questions, args.annotations) if args.limit is None else \
        subset_inputs(args.benchmark, args.questions, args.annotations, scope, out_dir)
    from duet_jax.reduction import average_visual_tokens
    cfg = model.config
    patches, layers = cfg.vision.num_patches, cfg.text.num_hidden_layers
    rows, baseline_summary, base_value = [], None, None
    for name, red in reductions:
        file_name = runner.safe_name(name)
        answers = os.path.join(out_dir, "answers", f"{file_name}.jsonl")
        spec = runner.spec_from_args(args, reduction=red, answers=answers,
                                     kept_dir=os.path.join(out_dir, "kept", file_name))
        stats = runner.run(spec, model, questions=questions)
        block = score_benchmark(args.benchmark, answers, annotations, q_path)
        summary_path = os.path.join(out_dir, "summaries", f"{file_name}.json")
        update_summary(summary_path, args.benchmark, block,
                       baseline_summary if red is not None else None)
        value = headline(args.benchmark, block)
        if red is None:
            baseline_summary, base_value = summary_path, value
        rows.append({
            "reduction": name, "avg_visual_tokens": average_visual_tokens(red, patches, layers),
            "lm_image_tokens": red.image_tokens(patches) if red is not None else patches,
            "metric": HEADLINE[args.benchmark][0], "value": value,
            "relative_to_none": (100.0 * value / base_value
                                 if value is not None and base_value else None),
            "other": _secondary(args.benchmark, block),
            # Generation speed of this invocation; None when everything was already answered.
            "tokens_per_s": stats["tokens_per_s"] if stats["answered"] else None,
            "answers": answers, "summary": summary_path})
        print(f"{name}: {HEADLINE[args.benchmark][1]} "
              f"{'n/a' if value is None else f'{value:.2f}'}")
    write_table(os.path.join(out_dir, "sweep.md"), args.benchmark, rows)
    payload = {"benchmark": args.benchmark, "model": os.path.abspath(args.model),
               "questions": os.path.abspath(q_path), "annotations": os.path.abspath(annotations),
               "limit": args.limit, "num_questions": len(scope), "rows": rows}
    atomic_write_text(os.path.join(out_dir, "sweep.json"), json.dumps(payload, indent=2),
                      prefix=".sweep-")
    write_plot(os.path.join(out_dir, "sweep.png"), args.benchmark, rows,
               os.path.basename(os.path.normpath(args.model)))
    print(f"sweep: {os.path.join(out_dir, 'sweep.md')}, sweep.json, sweep.png")
    return 0
