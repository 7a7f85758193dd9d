"""`python eval.py score` end to end in a subprocess (docs/API.md §4)."""
import json
import os

import pytest

SHORT = "Answer the question using a single word or phrase."
SPLITS = {"adversarial": 1, "random": 10000001, "popular": 20000001}


@pytest.fixture
def pope_run(files, llava_answer):
    """A tiny POPE run: 2 questions per split; returns (args, answers path)."""
    questions, answers = [], []
    for split, offset in SPLITS.items():
        files.jsonl(f"coco/coco_pope_{split}.json", [{"question_id": 1, "label": "yes"},
                                                     {"question_id": 2, "label": "no"}])
        for i, text in enumerate(["Yes", "No, there is not."]):
            q = {"question_id": offset + i, "image": f"COCO_val2014_{i:012d}.jpg",
                 "text": f"Is there a cat in the image?\n{SHORT}", "category": split}
            questions.append(q)
            answers.append(llava_answer(q["question_id"], text, q["text"]))
    answers_path = files.jsonl("answers.jsonl", answers)
    args = ["score", "--benchmark", "pope", "--answers", answers_path, "--annotations",
            f"{files.root}/coco", "--questions", files.jsonl("llava_pope_test.jsonl", questions),
            "--summary", f"{files.root}/summary.json"]
    return args, answers_path


def _error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_success_writes_summary(files, pope_run, run_eval):
    args, _ = pope_run
    proc = run_eval(*args)
    assert proc.returncode == 0, proc.stderr
    assert "POPE F1 mean 100.00" in proc.stdout
    summary = json.load(open(f"{files.root}/summary.json"))
    assert summary["pope"]["f1_mean"] == 100.0 and summary["pope"]["acc_mean"] == 100.0
    assert set(summary["pope"]["per_split"]) == set(SPLITS)
    assert set(summary["pope"]["per_split"]["random"]) >= {"acc", "precision", "recall", "f1", "yes_ratio", "n"}
    assert summary["relative_avg"]["missing"] == ["gqa", "mme", "sqa", "textvqa"]
    assert summary["relative_avg"]["vs_paper_baseline"] is None


def test_malformed_answer_line(files, pope_run, run_eval):
    args, answers = pope_run
    lines = open(answers).read().splitlines()
    lines[2] = lines[2][:-1]  # truncate the JSON object on line 3
    open(answers, "w").write("\n".join(lines) + "\n")
    line = _error_line(run_eval(*args))
    assert "answers.jsonl:3: malformed JSON line" in line
    assert not os.path.exists(f"{files.root}/summary.json")


def test_unknown_benchmark(files, pope_run, run_eval):
    args, _ = pope_run
    args = list(args)
    args[args.index("pope")] = "vqav2"
    line = _error_line(run_eval(*args))
    assert "unknown benchmark 'vqav2'" in line and "pope" in line


@pytest.mark.parametrize("change, message", [
    ("drop", "no answer line"),
    ("extra", "match no question"),
    ("retype", "no answer line"),  # int id written as a str: missing (and extra)
])
def test_answers_not_matching_questions(files, pope_run, run_eval, change, message):
    args, answers = pope_run
    records = [json.loads(line) for line in open(answers)]
    if change == "drop":
        records = records[:-1]
    elif change == "extra":
        records.append(dict(records[0], question_id=555))
    else:
        records[0]["question_id"] = str(records[0]["question_id"])
    files.jsonl("answers.jsonl", records)
    assert message in _error_line(run_eval(*args))
    assert not os.path.exists(f"{files.root}/summary.json")


def test_no_partial_summary_on_error(files, pope_run, run_eval):
    args, answers = pope_run
    summary_path = f"{files.root}/summary.json"
    assert run_eval(*args).returncode == 0
    before = open(summary_path, "rb").read()
    files.jsonl("answers.jsonl", [json.loads(line) for line in open(answers)][:-2])
    _error_line(run_eval(*args))
    assert open(summary_path, "rb").read() == before
    assert not [f for f in os.listdir(files.root) if f.endswith(".tmp")]


def test_score_does_not_import_jax(pope_run, run_eval):
    args, _ = pope_run
    proc = run_eval(*args, extra_python_flags=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    heavy = {m for m in imported if m.split(".")[0] in ("jax", "jaxlib", "flax", "torch", "transformers")}
    assert not heavy, sorted(heavy)[:5]
    assert "duet_jax.evaluation.scoring.pope" in imported  # the check itself sees our imports


def test_seed_missing_answer_still_writes_summary(files, llava_answer, run_eval):
    ann = files.json("SEED-Bench.json", {"question_type": {"Scene Understanding": 1}, "questions": [
        {"question_id": "1", "question_type_id": 1, "data_type": "image", "answer": "A"},
        {"question_id": "2", "question_type_id": 1, "data_type": "image", "answer": "B"}]})
    answers = files.jsonl("a.jsonl", [llava_answer(1, "A")])
    proc = run_eval("score", "--benchmark", "seed", "--answers", answers, "--annotations", ann,
                    "--summary", f"{files.root}/s.json")
    assert proc.returncode == 0, proc.stderr
    seed = json.load(open(f"{files.root}/s.json"))["seed"]
    assert seed["all"] == 50.0 and seed["n_missing"] == 1 and seed["image"] == 50.0


def test_judge_replies_only_for_video(pope_run, run_eval, files):
    args, _ = pope_run
    line = _error_line(run_eval(*args, "--judge-replies", files.root))
    assert "--benchmark video" in line


def test_missing_annotations_file(files, llava_answer, run_eval):
    answers = files.jsonl("a.jsonl", [llava_answer("1", "yes")])
    line = _error_line(run_eval("score", "--benchmark", "gqa", "--answers", answers, "--annotations",
                                f"{files.root}/nope.json", "--summary", f"{files.root}/s.json"))
    assert "nope.json: file not found" in line


def test_video_with_judge_and_gqa_with_baseline(files, llava_answer, run_eval):
    folder = f"{files.root}/TGIF_Zero_Shot_QA"
    files.json("TGIF_Zero_Shot_QA/test_q.json", [{"video_name": "g1", "question": "what?", "question_id": 7}])
    files.json("TGIF_Zero_Shot_QA/test_a.json", [{"question_id": 7, "answer": "dog"}])
    preds = files.jsonl("pred.json", [{"id": 7, "question": "what?", "answer": "dog", "pred": "a dog"}])
    files.json("judge/7.json", [{"pred": "yes", "score": 4}, {"q": "what?", "a": "dog", "pred": "a dog"}])
    summary = f"{files.root}/s.json"
    proc = run_eval("score", "--benchmark", "video", "--answers", preds, "--annotations", folder,
                    "--judge-replies", f"{files.root}/judge", "--summary", summary)
    assert proc.returncode == 0, proc.stderr
    assert "tgif: lexical 100.00 judge(judge) 100.00 score 4.00" in proc.stdout

    gqa_ann = files.json("gqa.json", {"1": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify"}}})
    base = f"{files.root}/base.json"
    answers = files.jsonl("a.jsonl", [llava_answer("1", "Yes.")])
    assert run_eval("score", "--benchmark", "gqa", "--answers", answers, "--annotations", gqa_ann,
                    "--summary", base).returncode == 0
    answers = files.jsonl("a.jsonl", [llava_answer("1", "no")])
    proc = run_eval("score", "--benchmark", "gqa", "--answers", answers, "--annotations", gqa_ann,
                    "--summary", summary, "--baseline-summary", base)
    assert proc.returncode == 0, proc.stderr
    merged = json.load(open(summary))
    assert merged["gqa"]["accuracy"] == 0.0 and merged["video"]["tgif"]["accuracy"] == 100.0
    assert merged["relative_avg"]["own_baseline_scores"]["gqa"] == 100.0
