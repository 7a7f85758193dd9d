"""The paper's "relative average %" (docs/EVAL.md §8).

Avg% = 100 * mean_b score_b(method) / score_b(baseline) over GQA, MME (P+C), POPE
(F1 mean), SQA (overall accuracy) and TextVQA; for Video-LLaVA the mean of the three
accuracy ratios. Computed against our own unreduced summary and against the paper's
baseline numbers; an average is null unless every benchmark of its set is present.
"""
from __future__ import annotations

IMAGE_BENCHMARKS = ("gqa", "mme", "pope", "sqa", "textvqa")
VIDEO_DATASETS = ("tgif", "msvd", "msrvtt")

# LLaVA-1.5-7B full-token numbers used by the paper's tables (MME = perception + cognition).
PAPER_BASELINE = {"gqa": 61.9, "mme": 1862.0, "pope": 85.9, "sqa": 69.5, "textvqa": 58.2}
# Full-token Video-LLaVA judge accuracies read off the poster's chart (+-0.3, GPT judge).
PAPER_VIDEO_BASELINE = {"tgif": 47.1, "msvd": 69.8, "msrvtt": 56.7}

# Which summary value is a benchmark's reported number.
_HEADLINE = {"gqa": "accuracy", "mme": "total", "pope": "f1_mean", "sqa": "accuracy",
             "textvqa": "accuracy"}


def headline(summary: dict, benchmark: str) -> float | None:
    """The reported number of `benchmark` in a summary dict, None when absent."""
    block = summary.get(benchmark)
    if not isinstance(block, dict):
        return None
    return block.get(_HEADLINE[benchmark])


def relative_average(scores: dict, baseline: dict, names) -> float | None:
    """100 * mean(scores[b] / baseline[b]) over `names`; None if any is missing or 0."""
    ratios = []
    for name in names:
        value, base = scores.get(name), baseline.get(name)
        if value is None or not base:
            return None
        ratios.append(value / base)
    return 100.0 * sum(ratios) / len(ratios)


def _video_scores(summary: dict | None, metric: str) -> dict:
    video = (summary or {}).get("video") or {}
    return {ds: block.get(metric) for ds, block in video.items() if isinstance(block, dict)}


def _video_judges(summary: dict | None) -> set:
    video = (summary or {}).get("video") or {}
    return {block.get("judge") for ds, block in video.items()
            if ds in VIDEO_DATASETS and isinstance(block, dict)}


def relative_block(summary: dict, own_baseline: dict | None = None) -> dict:
    """The summary's `relative_avg` entry (docs/EVAL.md §9), from the other entries."""
    scores = {b: headline(summary, b) for b in IMAGE_BENCHMARKS}
    own = {b: headline(own_baseline, b) for b in IMAGE_BENCHMARKS} if own_baseline else None
    block = {
        "benchmarks": list(IMAGE_BENCHMARKS),
        "vs_own_baseline": relative_average(scores, own, IMAGE_BENCHMARKS) if own else None,
        "vs_paper_baseline": relative_average(scores, PAPER_BASELINE, IMAGE_BENCHMARKS),
        "scores": scores,
        "own_baseline_scores": own,
        "paper_baseline": dict(PAPER_BASELINE),
        "missing": [b for b in IMAGE_BENCHMARKS if scores[b] is None],
    }
    lexical = _video_scores(summary, "lexical_accuracy")
    judged = _video_scores(summary, "accuracy")
    judges = _video_judges(summary)
    video = {
        "datasets": list(VIDEO_DATASETS),
        "missing": [d for d in VIDEO_DATASETS if lexical.get(d) is None],
        "lexical_vs_own_baseline": None,
        "judge": judges.pop() if len(judges) == 1 else None,
        "judge_vs_own_baseline": None,
        # Only meaningful with the paper's GPT judge; a local judge's numbers differ in scale.
        "judge_vs_paper_baseline": relative_average(judged, PAPER_VIDEO_BASELINE, VIDEO_DATASETS)
        if len(_video_judges(summary)) == 1 else None,
    }
    if own_baseline:
        video["lexical_vs_own_baseline"] = relative_average(
            lexical, _video_scores(own_baseline, "lexical_accuracy"), VIDEO_DATASETS)
        # Judge ratios compare like with like: the same single judge on both runs.
        if len(_video_judges(summary)) == 1 and _video_judges(summary) == _video_judges(own_baseline):
            video["judge_vs_own_baseline"] = relative_average(
                judged, _video_scores(own_baseline, "accuracy"), VIDEO_DATASETS)
    block["video"] = video
    return block
