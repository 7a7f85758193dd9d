"""The miniature tables: Avg covers only the benchmarks read from the picture."""
from __future__ import annotations

import re

import numpy as np
import pytest

from duet_jax.miniature import report
from duet_jax.miniature.evaluate import BLIND, resampled_headline


def _results(base, blind, reduced):
    out = {"unreduced": {"scores": base, "seconds": 2.0}, "r": {"scores": reduced, "seconds": 1.0}}
    if blind is not None:
        out[BLIND] = {"scores": blind, "seconds": 2.0}
    return out


BASE = {"pope": 50.0, "textvqa": 20.0, "gqa": 60.0}
BLIND_SCORES = {"pope": 49.0, "textvqa": 15.0, "gqa": 40.0}
REDUCED = {"pope": 70.0, "textvqa": 25.0, "gqa": 45.0}


def test_grounded_needs_the_margin_over_the_blind_control():
    assert report.grounded(_results(BASE, BLIND_SCORES, REDUCED), "unreduced") == ("gqa",)
    assert report.grounded(_results(BASE, None, REDUCED), "unreduced") == report.BENCHMARKS
    exactly = dict(BLIND_SCORES, textvqa=BASE["textvqa"] - report.GROUNDED_MARGIN)
    assert report.grounded(_results(BASE, exactly, REDUCED), "unreduced") == ("textvqa", "gqa")


def test_avg_leaves_out_and_stars_the_blind_level_benchmarks():
    results = _results(BASE, BLIND_SCORES, REDUCED)
    text = report.table([{"method": "r", "tokens": "64", "scores": REDUCED}], BASE, "t",
                        in_avg=report.grounded(results, "unreduced"))
    row = text.splitlines()[3]
    # Only GQA counts: 45 / 60 = 75 %, although POPE's F1 rose to 140 %.
    assert row.split()[-1] == "75.0%"
    assert "POPE F1*" in text and "TextVQA*" in text and "GQA*" not in text
    assert text.splitlines()[-1].startswith("* within 10 points")
    full = report.table([{"method": "r", "tokens": "64", "scores": REDUCED}], BASE, "t")
    assert full.splitlines()[3].split()[-1] == f"{100 * (70 / 50 + 25 / 20 + 45 / 60) / 3:.1f}%"
    assert "*" not in full


def test_plot_renders_when_no_benchmark_is_grounded(tmp_path):
    from duet_jax.miniature import presets
    blind = dict(BASE)
    results = _results(BASE, blind, REDUCED)
    cfg = presets.duet(64, 4)
    results[cfg.name] = results.pop("r")
    results["trained"] = {"scores": REDUCED, "seconds": 1.0}
    path = tmp_path / "plot.png"
    report.plot(str(path), results, {"DUET": [(64, cfg)]}, "unreduced", "trained", 64, 4)
    assert path.stat().st_size > 0
    assert report.relative_avg(REDUCED, BASE, ()) is None


def test_relative_avg_of_the_baseline_is_100():
    assert report.relative_avg(BASE, BASE, ("gqa",)) == pytest.approx(100.0)


def test_zoo_rows_show_their_average_and_the_notes_close_the_table():
    from duet_jax.miniature import presets
    table = presets.inference_presets(4, 4, ("DART", "pool"), (64,))
    results = _results(BASE, BLIND_SCORES, REDUCED)
    reduced = results.pop("r")
    for rows in table.values():
        results.update({cfg.name: reduced for _, cfg in rows})
    text = report.inference_table(results, table, "unreduced", 4,
                                  presets.table_notes(table, 4))
    lines = text.splitlines()
    assert [ln.split()[:2] for ln in lines[3:-3] if ln.startswith(("DART", "pool"))] == [
        ["DART", "195"], ["pool", "64"]]       # (576 + 3 x 68) / 4; 8 x 8 cells
    assert lines[-3].startswith("* within 10 points")
    assert lines[-2].startswith("CDPruner is not in the table") and "DART" in lines[-1]


def test_reading_table_stars_the_kinds_the_blind_control_matches():
    def kind(right, n):
        values = [1.0] * right + [0.0] * (n - right)
        return {"score": 100.0 * right / n, "n": n, "values": values}

    own = {"GQA colour": kind(14, 20), "GQA count": kind(10, 20), "TextVQA": kind(4, 20)}
    other = {"GQA colour": kind(4, 20), "GQA count": kind(9, 20), "TextVQA": kind(2, 20)}
    results = _results(BASE, BLIND_SCORES, REDUCED)
    results["unreduced"]["categories"], results[BLIND]["categories"] = own, other
    rows = {line.split("  ")[0].strip(): line.split() for line in
            report.reading_table(results, "unreduced").splitlines()[3:-2]}
    gap, lo, hi = rows["GQA colour"][-3], rows["GQA colour"][-2], rows["GQA colour"][-1]
    assert gap == "50.0" and float(lo.strip("[,")) < 50.0 < float(hi.strip("]"))  # 70-20: read
    assert rows["GQA count"][-4] == "5.0" and rows["GQA count"][-1] == "*"  # under the margin
    assert rows["TextVQA"][-3] == "10.0" and rows["TextVQA"][-1] != "*"     # the margin: read
    assert report.reading_table(_results(BASE, None, REDUCED), "unreduced") == ""


def test_paired_interval_covers_the_difference_and_shrinks_with_more_questions():
    assert report.paired_interval([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)
    # Every question one run right and the other wrong: the gap is 100 points, no spread.
    assert report.paired_interval([1] * 9, [0] * 9) == (100.0, 100.0)
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 640):
        a = (rng.random(n) < 0.7).astype(float)
        b = (rng.random(n) < 0.5).astype(float)
        lo, hi = report.paired_interval(a, b)
        assert lo < 100.0 * (a.mean() - b.mean()) < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2          # ~1/sqrt(n): 16x the questions, ~1/4 the width
    assert report.paired_interval(a, b) == report.paired_interval(a, b)   # seeded
    with pytest.raises(ValueError, match="same questions"):
        report.paired_interval([1, 0], [1])


def _pope_record(said, label, stratum):
    said, label = np.asarray(said, int), np.asarray(label, int)
    return {"said": said.tolist(), "label": label.tolist(), "stratum": list(stratum),
            "value": (said == label).astype(float).tolist(), "kind": ["POPE shapes"] * len(said)}


def test_resample_indices_stay_in_their_stratum_and_match_the_plain_bootstrap():
    strata = [0, 0, 1, 1, 1, 2]
    idx = report.resample_indices(strata, draws=500, seed=3)
    assert idx.shape == (500, 6)
    assert (np.asarray(strata)[idx] == np.asarray(strata)).all()
    assert set(np.unique(idx[:, 2:5])) == {2, 3, 4}          # every member gets drawn
    # One stratum: the draws of the plain paired bootstrap, so its intervals are unchanged.
    plain = np.random.default_rng(0).integers(0, 7, (report.BOOTSTRAP_DRAWS, 7))
    assert np.array_equal(report.resample_indices([5] * 7), plain)


def test_headline_interval_of_pope_f1():
    rng = np.random.default_rng(0)
    label = rng.random(300) < 0.5
    stratum = np.repeat([0, 1, 2], 100)
    good = _pope_record(np.where(rng.random(300) < 0.9, label, ~label), label, stratum)
    bad = _pope_record(np.where(rng.random(300) < 0.6, label, ~label), label, stratum)
    assert report.headline_interval("pope", good, good) == (0.0, 0.0)
    every = np.arange(300)[None]
    diff = (resampled_headline("pope", good, every)
            - resampled_headline("pope", bad, every))[0]
    lo, hi = report.headline_interval("pope", good, bad)
    assert 0.0 < lo < diff < hi
    # An all-"no" run has F1 0 in every split (docs/EVAL.md §10), whatever the resample.
    silent = _pope_record(np.zeros(300), label, stratum)
    assert resampled_headline("pope", silent, report.resample_indices(stratum, 50)).max() == 0
    with pytest.raises(ValueError, match="same questions"):
        report.headline_interval("pope", good, _pope_record([1], [1], [0]))


def test_spread_table_rows_and_cells():
    from duet_jax.reduction import ReductionConfig
    rng = np.random.default_rng(1)

    label = rng.random(200) < 0.5

    def run(p):      # 200 questions a benchmark, each answered right with probability p
        right = rng.random(200) < p
        rec = {"value": right.astype(float).tolist(), "stratum": [0] * 200,
               "kind": ["GQA colour"] * 200}
        pope = _pope_record(np.where(right, label, ~label), label, [0] * 200)
        questions = {"pope": pope, "textvqa": rec, "gqa": rec}
        every = np.arange(200)[None]
        return {"questions": questions, "scores": {
            b: float(resampled_headline(b, questions[b], every)[0]) for b in questions}}

    results = {name: run(p) for name, p in
               (("unreduced", 0.8), (BLIND, 0.3), ("duet", 0.5), ("vz", 0.7))}
    table_presets = {"DUET": [(64, ReductionConfig(name="duet"))],
                     "VisionZip": [(64, ReductionConfig(name="vz"))],
                     "PyramidDrop": [(64, None)]}
    text = report.spread_table(results, table_presets, "unreduced")
    rows = {line[:34].strip(): [float(x) for x in re.findall(r"[-+]?\d+\.\d", line[34:])]
            for line in text.splitlines()[3:]}
    assert set(rows) >= {"DUET 64 - unreduced", "VisionZip 64 - unreduced", "DUET - VisionZip at 64"}
    assert not any("PyramidDrop" in r for r in rows)                 # unreachable: no row
    cells = rows["DUET - VisionZip at 64"]
    diff = results["duet"]["scores"]["gqa"] - results["vz"]["scores"]["gqa"]
    assert len(cells) == 9 and cells[-3] == pytest.approx(diff, abs=0.05)   # GQA: the last
    lo, hi = cells[-2:]
    assert lo < diff < hi < 0                        # 50 % vs 70 % of 200: a real gap
    assert "*" not in text.splitlines()[1]           # every benchmark read: none starred
    results[BLIND] = results["unreduced"]             # a control as good: none read
    blind = report.spread_table(results, table_presets, "unreduced").splitlines()
    assert "GQA*" in blind[1] and blind[-1].startswith("* within")
