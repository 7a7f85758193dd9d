"""SEED-Bench (docs/EVAL.md §6, §10): exact letter equality, int-id lookup, micro averages."""
import pytest

from duet_jax.evaluation.scoring import seed


def _annotations(files):
    questions = [
        {"question_id": "1", "question_type_id": 1, "data_type": "image", "answer": "A"},
        {"question_id": "2", "question_type_id": 1, "data_type": "image", "answer": "B"},
        {"question_id": "3", "question_type_id": 2, "data_type": "image", "answer": "C"},
        {"question_id": "4", "question_type_id": 10, "data_type": "video", "answer": "D"},
        {"question_id": "5", "question_type_id": 10, "data_type": "video", "answer": "A"},
    ]
    types = {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10}
    return files.json("SEED-Bench.json", {"question_type": types, "questions": questions})


@pytest.mark.parametrize("text, correct", [("A", True), ("A.", False), ("(A)", False), ("a", False),
                                           (" A", False), ("A\n", False)])
def test_exact_equality(files, llava_answer, text, correct):
    ann = _annotations(files)
    answers = files.jsonl("a.jsonl", [llava_answer(1, text)])
    block = seed.score(answers, ann)
    assert block["per_type"]["Scene Understanding"] == (50.0 if correct else 0.0)


def test_micro_averages_and_types(files, llava_answer):
    ann = _annotations(files)
    answers = files.jsonl("a.jsonl", [llava_answer(1, "A"), llava_answer(2, "A"), llava_answer(3, "C"),
                                      llava_answer(4, "D"), llava_answer(5, "D")])
    block = seed.score(answers, ann)
    assert block["all"] == pytest.approx(100 * 3 / 5)
    assert block["image"] == pytest.approx(100 * 2 / 3)
    assert block["video"] == pytest.approx(50.0)
    # Micro, not the mean of per-type accuracies (that would be (50+100)/2 = 75 for image).
    assert block["per_type"] == {"Scene Understanding": 50.0, "Instance Identity": 100.0,
                                 "Action Recognition": 50.0}
    assert block["n_missing"] == 0 and not block["image_only"]


def test_str_question_id_counts_as_missing(files, llava_answer):
    ann = _annotations(files)
    answers = files.jsonl("a.jsonl", [llava_answer("1", "A"), llava_answer(2, "B"), llava_answer(3, "C"),
                                      llava_answer(4, "D"), llava_answer(5, "A")])
    block = seed.score(answers, ann)
    assert block["all"] == pytest.approx(80.0)
    assert block["n_missing"] == 1 and block["n_unmatched_answers"] == 1
    assert any("no answer line" in d for d in block["deviations"])


def test_all_wrong_type_reports_zero(files, llava_answer):
    # Every answer of type 2 present and wrong: the official KeyError; docs/EVAL.md §10 -> 0.
    ann = _annotations(files)
    answers = files.jsonl("a.jsonl", [llava_answer(1, "A"), llava_answer(2, "B"), llava_answer(3, "D"),
                                      llava_answer(4, "D"), llava_answer(5, "A")])
    block = seed.score(answers, ann)
    assert block["per_type"]["Instance Identity"] == 0.0
    assert any("Instance Identity" in d for d in block["deviations"])


def test_image_only_question_file(files, llava_answer):
    ann = _annotations(files)
    questions = files.jsonl("q.jsonl", [
        {"question_id": i, "image": f"SEED-Bench-image/{i}.jpg", "text": "Q", "category": "c"}
        for i in (1, 2, 3)])
    answers = files.jsonl("a.jsonl", [llava_answer(1, "A"), llava_answer(2, "B"), llava_answer(3, "A")])
    block = seed.score(answers, ann, questions)
    assert block["image"] == pytest.approx(100 * 2 / 3) and block["all"] == block["image"]
    assert block["video"] is None and block["image_only"] and block["n"] == 3
