"""`eval.py sweep`: runs + scores several reductions, writes the table, JSON and plot."""
import importlib
import json
import os

import pytest
from PIL import Image

from tests.helpers.tiny_checkpoint import LLAVA_SHAPED, cached_tiny_checkpoint, write_pope_fixture

REDUCTIONS = ["llava15-duet-64", "none", "llava15-visionzip-64"]


def _eval(*argv) -> int:
    return importlib.import_module("eval").main([str(a) for a in argv])


def _pope_f1_mean(answers: list, questions: list, labels: dict) -> float:
    """docs/EVAL.md §1 by hand: parse, pair a split's questions with its labels by position."""
    text = {a["question_id"]: a["text"] for a in answers}
    f1s = []
    for split, split_labels in labels.items():
        ids = [q["question_id"] for q in questions if q["category"] == split]
        assert len(ids) == len(split_labels)
        yes = [not ({"No", "not", "no"} & set(text[i].split(".")[0].replace(",", "").split(" ")))
               for i in ids]
        tp = sum(y and l == "yes" for y, l in zip(yes, split_labels))
        fp = sum(y and l == "no" for y, l in zip(yes, split_labels))
        fn = sum(not y and l == "yes" for y, l in zip(yes, split_labels))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return 100 * sum(f1s) / len(f1s)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep"))
    pope = write_pope_fixture(root)
    out = os.path.join(root, "out")
    args = ["sweep", "--model", cached_tiny_checkpoint(**LLAVA_SHAPED), "--benchmark", "pope",
            "--questions", pope["questions"], "--images", pope["images"], "--annotations",
            pope["annotations"], "--out-dir", out, "--reductions", *REDUCTIONS,
            "--batch-size", 2, "--max-new-tokens", 6, "--limit", 3]
    assert _eval(*args) == 0
    return {"out": out, "pope": pope, "args": args,
            "json": json.load(open(os.path.join(out, "sweep.json")))}


def test_rows_scores_and_token_axis(sweep):
    rows = sweep["json"]["rows"]
    assert [r["reduction"] for r in rows] == ["none", "llava15-duet-64", "llava15-visionzip-64"]
    # x axis: docs/ALGORITHM.md §4.1 by hand. DUET-64 keeps 72 + 30 = 102 tokens for layers
    # 0-15, half of them for 16-23 and none after; VisionZip-64 keeps 54 + 10 everywhere.
    assert [r["avg_visual_tokens"] for r in rows] == pytest.approx(
        [576, (102 * 16 + 51 * 8) / 32, 64])
    assert [r["lm_image_tokens"] for r in rows] == [576, 102, 64]
    questions = [json.loads(line) for line in open(sweep["pope"]["questions"])][:3]
    labels = {"adversarial": ["no", "yes"], "random": ["yes"]}   # first labels of each split
    for r in rows:
        answers = [json.loads(line) for line in open(r["answers"])]
        assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
        assert r["value"] == pytest.approx(_pope_f1_mean(answers, questions, labels))
        assert json.load(open(r["summary"]))["pope"]["f1_mean"] == pytest.approx(r["value"])
    base = rows[0]["value"]
    for r in rows:
        expected = None if not base else 100 * r["value"] / base
        assert r["relative_to_none"] == (pytest.approx(expected) if expected is not None else None)
    own = json.load(open(rows[1]["summary"]))["relative_avg"]["own_baseline"]
    assert own["path"] == os.path.abspath(rows[0]["summary"])


def test_subset_labels_are_the_split_prefixes(sweep):
    coco = os.path.join(sweep["out"], "subset", "coco")
    full = sweep["pope"]["annotations"]
    for split, n in (("adversarial", 2), ("random", 1)):
        sub = open(os.path.join(coco, f"coco_pope_{split}.json")).read().splitlines()
        assert sub == open(os.path.join(full, f"coco_pope_{split}.json")).read().splitlines()[:n]


def test_table_and_plot(sweep):
    table = open(os.path.join(sweep["out"], "sweep.md")).read().splitlines()
    assert table[0].startswith("| reduction | avg visual tokens / layer |") and len(table) == 5
    assert table[2].startswith("| none | 576.0 | 576 |")
    assert table[3].startswith("| llava15-duet-64 | 63.8 | 102 |")
    with Image.open(os.path.join(sweep["out"], "sweep.png")) as img:
        assert img.format == "PNG" and img.size == (700, 450)


def test_rerun_resumes_without_new_answers(sweep):
    stamp = lambda: {r["reduction"]: os.stat(r["answers"]).st_mtime_ns  # noqa: E731
                     for r in sweep["json"]["rows"]}
    before = stamp()
    assert _eval(*sweep["args"]) == 0
    after = json.load(open(os.path.join(sweep["out"], "sweep.json")))
    assert [r["value"] for r in after["rows"]] == [r["value"] for r in sweep["json"]["rows"]]
    assert stamp() == before      # every answer file untouched: nothing regenerated


def test_duplicate_reduction_is_an_error(sweep, capsys):
    args = list(sweep["args"])
    args[args.index("--reductions") + 1:args.index("--batch-size")] = ["none", "none"]
    assert _eval(*args) == 2
    assert "--reductions lists 'none' twice" in capsys.readouterr().err
