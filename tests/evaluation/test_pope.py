"""POPE (docs/EVAL.md §1, §10): the yes/no parse table, metrics, pairing, deviations."""
import pytest

from duet_jax.evaluation.scoring import ScoreError, pope

SHORT = "Answer the question using a single word or phrase."

# docs/EVAL.md §1 "Consequences" table.
PARSES_YES = ["NO", "Nope", "No!", "(No)", "None", "no\n", "Not really", "1. No", "Yes.No", ""]
PARSES_NO = ["Yes, there is not a dog", "I do not see", " No"]


@pytest.mark.parametrize("text", PARSES_YES)
def test_parses_as_yes(text):
    assert pope.parse_yes_no(text) == "yes"


@pytest.mark.parametrize("text", PARSES_NO)
def test_parses_as_no(text):
    assert pope.parse_yes_no(text) == "no"


def test_parse_rule_order():
    # Only the first sentence counts: the 'no' after the period is never seen.
    assert pope.parse_yes_no("Yes. No") == "yes"
    assert pope.parse_yes_no("No. Yes") == "no"
    # Commas are deleted before the space split ("no," -> "no").
    assert pope.parse_yes_no("no, there is") == "no"
    # Split on ' ' only: a tab does not separate words.
    assert pope.parse_yes_no("yes\tno") == "yes"
    assert pope.parse_yes_no("there is not") == "no"


def test_split_metrics_by_hand():
    preds = ["yes", "yes", "no", "no", "yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    m, notes = pope.split_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)
    assert notes == []


def test_zero_denominator_deviation():
    # No 'yes' prediction: the official code raises ZeroDivisionError; we report 0.
    m, notes = pope.split_metrics(["no", "no"], ["yes", "no"])
    assert m["precision"] == 0 and m["recall"] == 0 and m["f1"] == 0
    assert m["acc"] == pytest.approx(0.5)
    assert any("precision" in n for n in notes)


def _fixture(files, llava_answer, answers_by_split, labels_by_split, order=None):
    """Question file in split order, label files, answers (optionally reordered)."""
    questions, answers = [], []
    offsets = {"adversarial": 1, "random": 10000001, "popular": 20000001}
    for split in ("adversarial", "random", "popular"):
        for i, text in enumerate(answers_by_split.get(split, [])):
            qid = offsets[split] + i
            q = {"question_id": qid, "image": f"COCO_val2014_{i:012d}.jpg",
                 "text": f"Is there a dog in the image?\n{SHORT}", "category": split}
            questions.append(q)
            answers.append(llava_answer(qid, text, q["text"]))
    for split, labels in labels_by_split.items():
        files.jsonl(f"coco/coco_pope_{split}.json",
                    [{"question_id": i + 1, "image": "x.jpg", "text": "t", "label": lab}
                     for i, lab in enumerate(labels)])
    if order is not None:
        answers = [answers[i] for i in order]
    return (files.jsonl("answers.jsonl", answers), files.root + "/coco",
            files.jsonl("questions.jsonl", questions))


def test_score_three_splits(files, llava_answer):
    answers, coco, questions = _fixture(
        files, llava_answer,
        {"adversarial": ["Yes", "No", "Yes", "No"], "random": ["Yes", "Yes"], "popular": ["No", "No"]},
        {"adversarial": ["yes", "no", "no", "yes"], "random": ["yes", "no"], "popular": ["no", "no"]})
    block = pope.score(answers, coco, questions)
    adv = block["per_split"]["adversarial"]
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"], adv["n"]) == (1, 1, 1, 1, 4)
    assert adv["f1"] == pytest.approx(50.0)
    assert block["per_split"]["random"]["f1"] == pytest.approx(100 * 2 * 0.5 * 1 / 1.5)
    # popular: no 'yes' prediction and no 'yes' label -> P = R = F1 = 0 (deviation).
    assert block["per_split"]["popular"]["f1"] == 0
    assert block["per_split"]["popular"]["acc"] == pytest.approx(100.0)
    assert block["f1_mean"] == pytest.approx((50.0 + 200 / 3 + 0) / 3)
    assert block["acc_mean"] == pytest.approx((50.0 + 50.0 + 100.0) / 3)
    assert block["per_split"]["random"]["yes_ratio"] == pytest.approx(100.0)
    assert any("popular" in d for d in block["deviations"])


def test_pairs_by_question_id_not_answer_order(files, llava_answer):
    by_split = {"adversarial": ["Yes", "No", "No"], "random": ["Yes"], "popular": ["No"]}
    labels = {"adversarial": ["yes", "no", "yes"], "random": ["yes"], "popular": ["no"]}
    ordered = pope.score(*_fixture(files, llava_answer, by_split, labels))
    shuffled = pope.score(*_fixture(files, llava_answer, by_split, labels, order=[4, 2, 0, 3, 1]))
    assert shuffled["per_split"] == ordered["per_split"]


def test_label_count_mismatch_raises(files, llava_answer):
    # Officially zipped and silently truncated; docs/EVAL.md §10 says raise.
    args = _fixture(files, llava_answer, {"adversarial": ["Yes", "No"], "random": ["Yes"], "popular": ["No"]},
                    {"adversarial": ["yes", "no", "yes"], "random": ["yes"], "popular": ["no"]})
    with pytest.raises(ScoreError, match="3 labels.*2 questions"):
        pope.score(*args)


def test_missing_answer_raises(files, llava_answer):
    answers, coco, questions = _fixture(
        files, llava_answer, {"adversarial": ["Yes", "No"], "random": ["Yes"], "popular": ["No"]},
        {"adversarial": ["yes", "no"], "random": ["yes"], "popular": ["no"]})
    lines = open(answers).read().splitlines()
    with open(answers, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ScoreError, match="no answer line"):
        pope.score(answers, coco, questions)


def test_duplicate_answer_raises(files, llava_answer):
    answers, coco, questions = _fixture(
        files, llava_answer, {"adversarial": ["Yes"], "random": ["Yes"], "popular": ["No"]},
        {"adversarial": ["yes"], "random": ["yes"], "popular": ["no"]})
    with open(answers, "a") as f:
        f.write(open(answers).read().splitlines()[0] + "\n")
    with pytest.raises(ScoreError, match="duplicate question_id 1"):
        pope.score(answers, coco, questions)


def test_questions_required(files, llava_answer):
    answers, coco, _ = _fixture(files, llava_answer, {"adversarial": ["Yes"]}, {"adversarial": ["yes"]})
    with pytest.raises(ScoreError, match="--questions"):
        pope.score(answers, coco, None)


def test_no_label_files_raises(files, llava_answer):
    answers, _, questions = _fixture(files, llava_answer, {"adversarial": ["Yes"]}, {})
    files.text("coco/readme.txt", "not a label file")
    with pytest.raises(ScoreError, match="no coco_pope"):
        pope.score(answers, files.root + "/coco", questions)
