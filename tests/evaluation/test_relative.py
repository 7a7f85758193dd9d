"""Relative average (docs/EVAL.md §8) and summary merging (§9)."""
import json
import os

import pytest

from duet_jax.evaluation.scoring import ScoreError, relative
from duet_jax.evaluation.scoring import summary as summary_mod

# VisionZip's table (docs/EVAL.md §8) -> the project page's 97.7 / 96.3 / 92.8 %.
VISIONZIP = {
    192: ({"gqa": 59.3, "mme": 1782.6, "pope": 85.3, "sqa": 68.9, "textvqa": 57.3}, 97.69),
    128: ({"gqa": 57.6, "mme": 1761.7, "pope": 83.2, "sqa": 68.9, "textvqa": 56.8}, 96.25),
    64: ({"gqa": 55.1, "mme": 1690.0, "pope": 77.0, "sqa": 69.0, "textvqa": 55.5}, 92.81),
}


def _summary(scores, video=None):
    s = {"gqa": {"accuracy": scores["gqa"]}, "mme": {"total": scores["mme"]},
         "pope": {"f1_mean": scores["pope"]}, "sqa": {"accuracy": scores["sqa"]},
         "textvqa": {"accuracy": scores["textvqa"]}}
    if video:
        s["video"] = video
    return s


@pytest.mark.parametrize("tokens", [192, 128, 64])
def test_visionzip_worked_check(tokens):
    scores, expected = VISIONZIP[tokens]
    block = relative.relative_block(_summary(scores))
    assert round(block["vs_paper_baseline"], 2) == expected
    assert block["missing"] == [] and block["vs_own_baseline"] is None


@pytest.mark.parametrize("accs, expected", [((48.9, 70.1, 55.6), 100.8), ((46.2, 67.7, 55.2), 97.5)])
def test_video_worked_check(accs, expected):
    video = {ds: {"judge": "gpt-4.1", "accuracy": a, "lexical_accuracy": 1.0}
             for ds, a in zip(relative.VIDEO_DATASETS, accs)}
    block = relative.relative_block({"video": video})
    assert round(block["video"]["judge_vs_paper_baseline"], 1) == expected
    assert block["vs_paper_baseline"] is None and len(block["missing"]) == 5


def test_own_baseline_and_missing():
    own = _summary(relative.PAPER_BASELINE)
    half = {k: v / 2 for k, v in relative.PAPER_BASELINE.items()}
    block = relative.relative_block(_summary(half), own)
    assert block["vs_own_baseline"] == pytest.approx(50.0)
    partial = _summary(half)
    del partial["mme"]
    block = relative.relative_block(partial, own)
    assert block["vs_own_baseline"] is None and block["missing"] == ["mme"]


def test_video_own_baseline_needs_same_judge():
    def run(acc, judge):
        return {"video": {ds: {"judge": judge, "accuracy": acc, "lexical_accuracy": acc / 2}
                          for ds in relative.VIDEO_DATASETS}}
    block = relative.relative_block(run(40.0, "qwen"), run(50.0, "qwen"))["video"]
    assert block["judge_vs_own_baseline"] == pytest.approx(80.0)
    assert block["lexical_vs_own_baseline"] == pytest.approx(80.0)
    other = relative.relative_block(run(40.0, "qwen"), run(50.0, "llama"))["video"]
    assert other["judge_vs_own_baseline"] is None and other["lexical_vs_own_baseline"] == pytest.approx(80.0)


def test_update_summary_merges_and_keeps_baseline(tmp_path):
    path, base = str(tmp_path / "run.json"), str(tmp_path / "base.json")
    summary_mod.write_atomic(base, _summary(relative.PAPER_BASELINE))
    scores, expected = VISIONZIP[192]
    for bench, key in (("gqa", "accuracy"), ("mme", "total"), ("pope", "f1_mean"), ("sqa", "accuracy")):
        summary_mod.update_summary(path, bench, {key: scores[bench]}, baseline_path=base)
    # The last call has no --baseline-summary: the stored snapshot is reused.
    merged = summary_mod.update_summary(path, "textvqa", {"accuracy": scores["textvqa"]})
    on_disk = json.load(open(path))
    assert on_disk == merged
    assert set(summary_mod.SUMMARY_KEYS) - {"seed", "video"} <= set(on_disk)
    rel = on_disk["relative_avg"]
    assert round(rel["vs_paper_baseline"], 2) == expected
    assert rel["vs_own_baseline"] == pytest.approx(rel["vs_paper_baseline"])
    assert rel["own_baseline"]["path"] == os.path.abspath(base)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_video_blocks_merge_per_dataset(tmp_path):
    path = str(tmp_path / "run.json")
    summary_mod.update_summary(path, "video", {"msvd": {"lexical_accuracy": 10.0, "judge": None}})
    merged = summary_mod.update_summary(path, "video", {"tgif": {"lexical_accuracy": 20.0, "judge": None}})
    assert set(merged["video"]) == {"msvd", "tgif"}


def test_bad_existing_summary_and_missing_baseline(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("[1, 2]")
    with pytest.raises(ScoreError, match="not a summary"):
        summary_mod.update_summary(str(path), "gqa", {"accuracy": 1.0})
    with pytest.raises(ScoreError, match="summary not found"):
        summary_mod.update_summary(str(tmp_path / "new.json"), "gqa", {"accuracy": 1.0},
                                   baseline_path=str(tmp_path / "absent.json"))
    assert not (tmp_path / "new.json").exists()
