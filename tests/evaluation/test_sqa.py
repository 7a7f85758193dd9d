"""ScienceQA (docs/EVAL.md §5, §10): the three letter-parse rules, totals, IMG subset."""
import pytest

from duet_jax.evaluation.scoring import ScoreError, sqa

LETTER = "Answer with the option's letter from the given choices directly."


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("E", "E"),                                   # rule 1
    ("B. foo", "B"), ("B. ", "B"), ("C. The answer", "C"),    # rule 2
    ("The answer is C.", "C"), ("I think The answer is D!", "D"),  # rule 3: '.' is any char
    ("The answer is Z.", "Z"),                                # any capital; index check rejects it
])
def test_parse_rules(text, letter):
    assert sqa.parse_letter(text) == letter


# docs/EVAL.md §5: these parse as FAILED.
@pytest.mark.parametrize("text", ["(A)", "A.", "a", "A)", "Answer: A", " B", "A\n", "Option A", "",
                                  "The answer is C", "The answer is C\n",
                                  "The answer is A. The answer is B."])
def test_parse_failed(text):
    assert sqa.parse_letter(text) == sqa.FAILED


def test_empty_output_is_not_a_letter():
    # The trap: '' in "ABCDE" is True for a string; the official options are a list.
    assert "" in "ABCDE"
    assert sqa.prediction_index(sqa.parse_letter(""), 5) == -1


def test_letter_beyond_choices_is_wrong():
    assert sqa.prediction_index("E", 3) == -1
    assert sqa.prediction_index("C", 3) == 2
    assert sqa.prediction_index("Z", 5) == -1
    assert sqa.prediction_index(sqa.FAILED, 5) == -1


def _problems(files, n_choices):
    problems = {str(i): {"question": f"q{i}", "choices": ["x"] * n, "answer": 1, "image": None}
                for i, n in enumerate(n_choices)}
    files.json("sqa/problems.json", problems)
    files.json("sqa/pid_splits.json", {"test": list(problems), "train": []})
    return files.root + "/sqa"


def _prompt(image):
    return ("<image>\n" if image else "") + f"Question?\nA. x\nB. y\n{LETTER}"


def test_score_totals_and_img_subset(files, llava_answer):
    folder = _problems(files, [2, 2, 3, 3, 5])
    answers = files.jsonl("a.jsonl", [
        llava_answer("0", "B", _prompt(True)),          # right, IMG
        llava_answer("1", "A", _prompt(True)),          # wrong, IMG
        llava_answer("2", "B. two", _prompt(False)),    # right, text-only
        llava_answer("3", "The answer is B.", _prompt(False)),  # right
        # "4" missing: FAILED and text-only
    ])
    block = sqa.score(answers, folder)
    assert block["accuracy"] == pytest.approx(100 * 3 / 5)
    assert block["img_accuracy"] == pytest.approx(50.0)
    assert (block["n"], block["n_img"], block["n_missing"]) == (5, 2, 1)


def test_img_accuracy_null_without_image_prompts(files, llava_answer):
    folder = _problems(files, [2])
    answers = files.jsonl("a.jsonl", [llava_answer("0", "B", _prompt(False))])
    block = sqa.score(answers, folder)
    assert block["accuracy"] == 100.0 and block["img_accuracy"] is None
    assert block["deviations"]


def test_answers_outside_the_split_are_ignored_with_a_warning(files, llava_answer, capsys):
    """eval_science_qa.py scores every problem of pid_splits["test"] and reads no other id:
    the number is the split's (here 1 of 2 right, the other split problem missing), and
    the ignored ids are counted on stderr."""
    folder = _problems(files, [2, 2])
    answers = files.jsonl("a.jsonl", [llava_answer("0", "B", _prompt(False)),
                                      llava_answer("77", "A", _prompt(False)),
                                      llava_answer("78", "A", _prompt(False))])
    block = sqa.score(answers, folder)
    assert block["accuracy"] == pytest.approx(50.0) and block["n"] == 2
    assert block["n_missing"] == 1 and block["n_ignored"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "2 answer(s)" in err[0]


def test_question_file_must_match(files, llava_answer):
    folder = _problems(files, [2, 2])
    questions = files.json("llava_test_CQM-A.json", [
        {"id": "0", "image": "0/image.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                              {"from": "gpt", "value": "B"}]},
        {"id": "1", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}])
    answers = files.jsonl("a.jsonl", [llava_answer("0", "B", _prompt(True))])
    with pytest.raises(ScoreError, match="no answer line"):
        sqa.score(answers, folder, questions)
    answers = files.jsonl("a.jsonl", [llava_answer("0", "B", _prompt(True)),
                                      llava_answer("1", "A", _prompt(False))])
    block = sqa.score(answers, folder, questions)
    assert block["accuracy"] == pytest.approx(50.0) and block["img_accuracy"] == 100.0
