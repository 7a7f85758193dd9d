"""GQA (docs/EVAL.md §3, §10): trailing-period strip + lowercase, exact match, binary/open."""
import pytest

from duet_jax.evaluation.scoring import ScoreError, gqa


# docs/EVAL.md §3 "Consequences".
@pytest.mark.parametrize("text, gold, correct", [
    ("Yes.", "yes", True), ("The man", "man", False), ("Grey", "gray", False), ("two", "2", False),
    ("Yes, it is.", "yes", False), (" yes", "yes", False), ("Left...", "left", True),
    ("yes ", "yes", False), ("a.b.", "a.b", True),
])
def test_conversion_consequences(text, gold, correct):
    assert (gqa.convert_prediction(text) == gold) is correct


def _annotations(files, n_binary=2, n_open=3, unbalanced=True):
    questions = {}
    for i in range(n_binary):
        questions[f"{100 + i}"] = {"question": "Is it?", "answer": "yes", "isBalanced": True,
                                   "types": {"structural": "verify", "semantic": "attr"}}
    for i in range(n_open):
        questions[f"{200 + i}"] = {"question": "What is it?", "answer": "cat", "isBalanced": True,
                                   "types": {"structural": "query", "semantic": "obj"}}
    if unbalanced:
        questions["999"] = {"question": "x", "answer": "dog", "isBalanced": False,
                            "types": {"structural": "query"}}
    return files.json("testdev_balanced_questions.json", questions)


def test_score_binary_open(files, llava_answer):
    ann = _annotations(files)
    answers = files.jsonl("a.jsonl", [
        llava_answer("100", "Yes."), llava_answer("101", "No"),
        llava_answer("200", "Cat"), llava_answer("201", "cat."), llava_answer("202", "a cat"),
    ])
    block = gqa.score(answers, ann)
    assert block["accuracy"] == pytest.approx(100 * 3 / 5)
    assert block["binary"] == pytest.approx(50.0)
    assert block["open"] == pytest.approx(100 * 2 / 3)
    assert (block["n"], block["n_binary"], block["n_open"]) == (5, 2, 3)
    assert block["per_structural_type"]["verify"] == pytest.approx(50.0)


def test_missing_prediction_raises(files, llava_answer):
    # The official script aborts on a balanced question without a prediction.
    ann = _annotations(files, n_binary=1, n_open=1)
    answers = files.jsonl("a.jsonl", [llava_answer("100", "yes")])
    with pytest.raises(ScoreError, match="no prediction for 1 balanced"):
        gqa.score(answers, ann)


def test_unbalanced_prediction_not_required_and_not_scored(files, llava_answer):
    ann = _annotations(files, n_binary=1, n_open=0)
    answers = files.jsonl("a.jsonl", [llava_answer("100", "yes"), llava_answer("999", "cat")])
    block = gqa.score(answers, ann)
    assert block["n"] == 1 and block["accuracy"] == 100.0


def test_unknown_answer_id_raises(files, llava_answer):
    ann = _annotations(files, n_binary=1, n_open=0)
    answers = files.jsonl("a.jsonl", [llava_answer("100", "yes"), llava_answer("555", "no")])
    with pytest.raises(ScoreError, match="not in"):
        gqa.score(answers, ann)


def test_question_file_restricts_population(files, llava_answer):
    ann = _annotations(files, n_binary=2, n_open=1)
    q = [{"question_id": "100", "image": "n1.jpg", "text": "Is it?", "category": "x"},
         {"question_id": "200", "image": "n2.jpg", "text": "What?", "category": "x"}]
    questions = files.jsonl("q.jsonl", q)
    answers = files.jsonl("a.jsonl", [llava_answer("100", "no"), llava_answer("200", "cat")])
    block = gqa.score(answers, ann, questions)
    assert block["n"] == 2 and block["accuracy"] == pytest.approx(50.0)
    # An int id does not match the str question id: missing + extra.
    answers = files.jsonl("a.jsonl", [llava_answer(100, "no"), llava_answer("200", "cat")])
    with pytest.raises(ScoreError, match="no answer line"):
        gqa.score(answers, ann, questions)
