"""The miniature tables: Avg covers only the benchmarks read from the picture."""
from __future__ import annotations

import pytest

from duet_jax.miniature import report
from duet_jax.miniature.evaluate import BLIND


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
    own = {"GQA colour": {"score": 70.0, "n": 30}, "GQA count": {"score": 50.0, "n": 30},
           "TextVQA": {"score": 31.0, "n": 90}}
    other = {"GQA colour": {"score": 20.0, "n": 30}, "GQA count": {"score": 45.0, "n": 30},
             "TextVQA": {"score": 21.0, "n": 90}}
    results = _results(BASE, BLIND_SCORES, REDUCED)
    results["unreduced"]["categories"], results[BLIND]["categories"] = own, other
    rows = {line.split("  ")[0].strip(): line for line in
            report.reading_table(results, "unreduced").splitlines()[3:-1]}
    assert rows["GQA colour"].split()[-1] == "50.0"             # 70 - 20, read
    assert rows["GQA count"].split()[-2:] == ["5.0", "*"]        # under the margin
    assert rows["TextVQA"].split()[-1] == "10.0"                 # exactly the margin: read
    assert report.reading_table(_results(BASE, None, REDUCED), "unreduced") == ""
