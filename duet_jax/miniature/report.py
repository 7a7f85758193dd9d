"""The miniature's tables (paper Tables 1, 3, 5, 6 in miniature), the plot and report.md.

Scores are the benchmarks' reported numbers (POPE: mean F1 over the three
splits; TextVQA: soft accuracy; GQA: exact-match accuracy), each also shown
relative to the unreduced baseline; "Avg" is the paper's relative average
(docs/EVAL.md §8), 100 * mean_b score_b(method) / score_b(baseline), over the
benchmarks the model reads from the picture: those where the unreduced model
beats the blind control (the same questions beside another question's image)
by GROUNDED_MARGIN points. On the others a reduction can only move the answer
prior (e.g. how often POPE is answered "Yes"), so they are shown, starred, and
left out of Avg. "prefill" is the unreduced model's jitted prefill time over the
method's (evaluate.time_prefill: a batch of 16 benchmark prompts, median of 7);
"train ↓" the cut in fine-tuning step time with DUET on.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from duet_jax.evaluation.scoring.relative import relative_average
from duet_jax.miniature.dataset import BENCHMARKS
from duet_jax.miniature.evaluate import BLIND, resampled_headline

LABELS = {"pope": "POPE F1", "textvqa": "TextVQA", "gqa": "GQA"}
GROUNDED_MARGIN = 10.0      # points above the blind control


def grounded(results: dict, base_name: str) -> Tuple[str, ...]:
    """The benchmarks the unreduced model answers from the picture (all without a control)."""
    if BLIND not in results:
        return BENCHMARKS
    base, blind = results[base_name]["scores"], results[BLIND]["scores"]
    return tuple(b for b in BENCHMARKS if base[b] - blind[b] >= GROUNDED_MARGIN)


def relative_avg(scores: Dict[str, float], base: Dict[str, float],
                 benchmarks: Sequence[str] = BENCHMARKS) -> Optional[float]:
    return relative_average(scores, base, benchmarks) if benchmarks else None


def _cell(value: float, base: float) -> str:
    rel = 100.0 * value / base if base else float("nan")
    return f"{value:5.1f} ({rel:5.1f}%)"


def table(rows: List[dict], base: Dict[str, float], title: str, extra: str = "",
          in_avg: Sequence[str] = BENCHMARKS) -> str:
    """rows: {method, tokens, scores or None, note, [extra column value]} -> aligned text.
    in_avg: the benchmarks Avg covers; the others are starred and footnoted."""
    head = f"{'method':<24}{'tokens':>8}  " + "".join(
        f"{LABELS[b] + ('' if b in in_avg else '*'):>17}" for b in BENCHMARKS)
    head += f"{'Avg':>9}" + (f"{extra:>10}" if extra else "")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        line = f"{r['method']:<24}{r['tokens']:>8}  "
        if r.get("scores") is None:
            line += r.get("note", "n/a")
        else:
            line += "".join(f"{_cell(r['scores'][b], base[b]):>17}" for b in BENCHMARKS)
            avg = relative_avg(r["scores"], base, in_avg)
            line += f"{avg:8.1f}%" if avg is not None else f"{'n/a':>9}"
            if extra:
                line += f"{r.get('extra', ''):>10}"
        lines.append(line)
    if len(in_avg) < len(BENCHMARKS):
        lines.append(f"* within {GROUNDED_MARGIN:.0f} points of the blind control (another's "
                     "image): not read from the picture, left out of Avg")
    return "\n".join(lines)


def inference_table(results: dict, presets: dict, base_name: str, num_layers: int,
                    notes: Sequence[str] = ()) -> str:
    """Table 1 / 5 in miniature: every method at every budget on the baseline model;
    `notes`: footnotes printed under it."""
    from duet_jax.reduction import average_visual_tokens
    base = results[base_name]
    rows = [{"method": "unreduced", "tokens": "576", "scores": base["scores"],
             "extra": "1.00x"}]
    if BLIND in results:    # the floor: what the model scores from the question alone
        rows.append({"method": "  another's image", "tokens": "576",
                     "scores": results[BLIND]["scores"], "extra": "-"})
    for budget in sorted({b for cfgs in presets.values() for b, _ in cfgs}, reverse=True):
        for method, cfgs in presets.items():
            for b, cfg in cfgs:
                if b != budget:
                    continue
                if cfg is None:
                    rows.append({"method": method, "tokens": str(b), "scores": None,
                                 "note": f"unreachable: layer 1 alone holds 576/{num_layers} "
                                         f"= {576 / num_layers:.0f} tokens per layer"})
                    continue
                r = results[cfg.name]
                avg = average_visual_tokens(cfg, 576, num_layers)
                rows.append({"method": method, "tokens": f"{avg:.0f}", "scores": r["scores"],
                             "extra": f"{base['seconds'] / r['seconds']:.2f}x"})
    text = table(rows, base["scores"], "Inference-only (paper Tables 1 + 5), baseline model:",
                 extra="prefill", in_avg=grounded(results, base_name))
    return "\n".join([text, *notes])


def trained_table(results: dict, base_name: str, duet_name: str, trained_name: str,
                  budget: int, train: dict) -> str:
    """Table 3 + 6 in miniature: DUET inference-only vs DUET-trained, and training time."""
    base = results[base_name]["scores"]
    full_s, duet_s = train["finetune-full"]["step_s"], train["finetune-duet"]["step_s"]
    cut = f"{100.0 * (1.0 - duet_s / full_s):.0f}%" if full_s and duet_s else "n/a"
    rows = [{"method": "unreduced (trained full)", "tokens": "576", "scores": base,
             "extra": "0%"},
            {"method": "DUET inference-only", "tokens": str(budget),
             "scores": results[duet_name]["scores"], "extra": "-"},
            {"method": "DUET trained with DUET", "tokens": str(budget),
             "scores": results[trained_name]["scores"], "extra": cut}]
    return table(rows, base, f"Trained with DUET (paper Tables 3 + 6) at {budget} tokens:",
                 extra="train ↓", in_avg=grounded(results, base_name))


BOOTSTRAP_DRAWS = 2000


def resample_indices(strata: Sequence[int], draws: int = BOOTSTRAP_DRAWS,
                     seed: int = 0) -> np.ndarray:
    """[draws, N] question indices: each position drawn with replacement from the questions
    of its own stratum (POPE's splits, whose F1s are averaged, keep their sizes). Seeded."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    idx = np.empty((draws, strata.size), np.int64)
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        idx[:, members] = members[rng.integers(0, members.size, (draws, members.size))]
    return idx


def _percentiles(diffs: np.ndarray, level: float) -> Tuple[float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    return float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100.0 - tail))


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                    draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval (points) of mean(a) - mean(b) x100, where a[i] and b[i]
    score the same question i under two runs: questions are resampled with replacement,
    both runs together. Seeded: the same scores give the same interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not a.size:
        raise ValueError(f"paired scores need the same questions: {a.shape} vs {b.shape}")
    idx = resample_indices(np.zeros(a.size, np.int64), draws, seed)
    return _percentiles(100.0 * (a[idx] - b[idx]).mean(axis=1), level)


def headline_interval(benchmark: str, a: dict, b: dict, level: float = 0.95,
                      draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> Tuple[float, float]:
    """`paired_interval` for a benchmark's headline (POPE's mean F1 is no mean of question
    scores): a, b are two runs' `evaluate.question_records` of it, resampled together
    within POPE's splits."""
    if a["stratum"] != b["stratum"] or not a["stratum"]:
        raise ValueError("paired runs need the same questions")
    idx = resample_indices(a["stratum"], draws, seed)
    return _percentiles(resampled_headline(benchmark, a, idx)
                        - resampled_headline(benchmark, b, idx), level)


def spread_table(results: dict, table_presets: dict, base_name: str,
                 trained: Optional[Tuple[str, str]] = None) -> str:
    """How sure each difference is: every reduced row of the inference table against the
    unreduced model, the paper's orderings (DUET, VisionZip, PyramidDrop) at each budget,
    and `trained` = (DUET-trained run, its inference-only run); each cell the difference
    in headline points with its 95 % paired bootstrap interval over the questions."""
    budgets = sorted({b for cfgs in table_presets.values() for b, c in cfgs if c}, reverse=True)
    # {budget: {method: run name}} of the reachable rows
    runs = {budget: {m: c.name for m, cfgs in table_presets.items() for b, c in cfgs
                     if c is not None and b == budget} for budget in budgets}
    pairs = [(f"{m} {budget} - unreduced", n, base_name)
             for budget in budgets for m, n in runs[budget].items()]
    for budget, named in runs.items():
        for x, y in (("DUET", "VisionZip"), ("DUET", "PyramidDrop"), ("VisionZip", "PyramidDrop")):
            if x in named and y in named:
                pairs.append((f"{x} - {y} at {budget}", named[x], named[y]))
    if trained is not None:
        pairs.append(("DUET trained - inference-only", *trained))
    in_avg = grounded(results, base_name)
    head = f"{'difference':<34}" + "".join(
        f"{LABELS[b] + ('' if b in in_avg else '*'):>24}" for b in BENCHMARKS)
    lines = ["How sure each difference is (points, 95% paired bootstrap interval over the "
             "questions):", head, "-" * len(head)]
    for label, a, b in pairs:
        if a not in results or b not in results:
            continue
        cells = []
        for bench in BENCHMARKS:
            qa, qb = results[a]["questions"][bench], results[b]["questions"][bench]
            lo, hi = headline_interval(bench, qa, qb)
            diff = results[a]["scores"][bench] - results[b]["scores"][bench]
            cells.append(f"{diff:+6.1f} [{lo:+6.1f},{hi:+6.1f}]")
        lines.append(f"{label:<34}" + "".join(f"{c:>24}" for c in cells))
    lines.append("an interval that excludes 0 is a difference the questions support; "
                 f"POPE is resampled within its splits ({BOOTSTRAP_DRAWS} draws)")
    if len(in_avg) < len(BENCHMARKS):
        lines.append(f"* within {GROUNDED_MARGIN:.0f} points of the blind control: "
                     "a difference there moves the answer prior, not reading")
    return "\n".join(lines)


def reading_table(results: dict, base_name: str) -> str:
    """Per kind of question (evaluate.category_scores): the unreduced model with its own
    image and with another's, and the gap; kinds under GROUNDED_MARGIN are starred. The
    benchmark headlines mix kinds (POPE asks about shapes and letters, GQA four kinds),
    so this says which of them are read from the picture."""
    if BLIND not in results:
        return ""
    own, other = results[base_name]["categories"], results[BLIND]["categories"]
    other_label = "another's"
    head = (f"{'question kind':<18}{'n':>5}{'own image':>12}{other_label:>12}{'gap':>8}"
            f"{'95% interval':>16}")
    lines = ["What the unreduced model reads from the picture, per kind of question:", head,
             "-" * len(head)]
    for kind, s in own.items():
        gap = s["score"] - other[kind]["score"]
        lo, hi = paired_interval(s["values"], other[kind]["values"])
        star = "" if gap >= GROUNDED_MARGIN else " *"
        lines.append(f"{kind:<18}{s['n']:>5}{s['score']:>12.1f}{other[kind]['score']:>12.1f}"
                     f"{gap:>8.1f}{f'[{lo:.1f}, {hi:.1f}]':>16}{star}")
    lines.append(f"* under {GROUNDED_MARGIN:.0f} points above another's image: answered from "
                 "the question, not the picture")
    lines.append(f"interval: the gap's 95 % paired bootstrap over the questions "
                 f"({BOOTSTRAP_DRAWS} draws)")
    return "\n".join(lines)


def plot(path: str, results: dict, presets: dict, base_name: str, trained_name: str,
         trained_budget: int, num_layers: int) -> None:
    """Relative average (%) against average visual tokens per LM layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator
    from duet_jax.reduction import average_visual_tokens

    base = results[base_name]["scores"]
    in_avg = grounded(results, base_name)

    def rel(name):      # NaN (no point) when no benchmark is read from the picture
        value = relative_avg(results[name]["scores"], base, in_avg)
        return float("nan") if value is None else value

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = {"VisionZip": "s", "PyramidDrop": "^", "DUET (vanilla)": "v", "DUET (C)": "D",
               "DUET": "o", "DivPrune": "x", "DART": "<", "VisPruner": ">", "VScan": "p",
               "random": "h", "pool": "8"}
    for method, cfgs in presets.items():
        pts = [(average_visual_tokens(c, 576, num_layers), rel(c.name))
               for _, c in cfgs if c is not None]
        if pts:
            ax.plot(*zip(*sorted(pts)), marker=markers.get(method, "o"), label=method)
    trained = rel(trained_name)
    ax.plot([trained_budget], [trained], "P", markersize=11, color="tab:purple",
            label="DUET trained with DUET")
    ax.plot([576], [100.0], "*", markersize=13, color="tab:red", label="unreduced (576)")
    ax.axhline(100.0, color="tab:red", linestyle="--", linewidth=0.8)
    if BLIND in results:    # the floor: the same questions beside another question's image
        ax.axhline(rel(BLIND), color="tab:gray", linestyle=":", linewidth=1.2,
                   label="another's image (blind control)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks([64, 128, 192, 576])
    ax.set_xticklabels(["64", "128", "192", "576"])
    ax.set_xlabel("average visual tokens per LM layer")
    ax.set_ylabel("relative accuracy (%): " + ", ".join(LABELS[b] for b in in_avg))
    ax.set_title("Miniature DUET-VLM: accuracy vs visual tokens (test split)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)


def write_report(path: str, sections: List[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("# Miniature DUET-VLM results\n\n")
        for s in sections:
            f.write("```\n" + s + "\n```\n\n")
