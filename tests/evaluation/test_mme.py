"""MME (docs/EVAL.md §4, §10): first-4-characters parse, acc+ pairing, P / C / P+C."""
import pytest

from duet_jax.evaluation.scoring import ScoreError, mme

SHORT = "Answer the question using a single word or phrase."

# docs/EVAL.md §4 example table (inputs are lower-cased by the calculation first).
PARSE_TABLE = [("Nope", "no"), ("Not sure", "no"), ("None", "no"), ("know", "no"), ("Noo", "no"),
               ("Yess", "yes"), ("Nyes", "yes"), ("yes and no", "yes"), ("YesNo", "yes"),
               ("I think yes", "other"), ("The answer is yes", "other"), ("Y", "other"),
               ("", "other"), ("Church", "other"), ("Yes", "yes"), ("No", "no")]


@pytest.mark.parametrize("text, parsed", PARSE_TABLE)
def test_parse_table(text, parsed):
    assert mme.parse_prediction(text.lower()) == parsed


@pytest.mark.parametrize("text, parsed", PARSE_TABLE)
def test_trailing_newline_changes_nothing(text, parsed):
    # The official TSV line keeps its '\n'; the outcome must be the same.
    assert mme.parse_prediction(text.lower() + "\n") == parsed


def _task(files, root, task, items, layout="flat"):
    """items: [(file_stem, question, gt)], two per image; writes the GT txt files.
    Returns question records for the question file."""
    folder = f"{root}/{task}" + ("/questions_answers_YN" if layout == "yn" else "")
    if layout == "yn":
        files.text(f"{root}/{task}/images/.keep", "")
    by_file = {}
    for stem, question, gt in items:
        by_file.setdefault(stem, []).append(f"{question} Please answer yes or no.\t{gt}")
    for stem, lines in by_file.items():
        files.text(f"{folder}/{stem}.txt", "\n".join(lines) + "\n")
    return [{"question_id": f"{task}/{stem}.png", "image": f"{task}/{stem}.png",
             "text": f"{q}\n{SHORT}", "category": task} for stem, q, _ in items]


def _answers(files, llava_answer, questions, texts):
    return files.jsonl("a.jsonl", [llava_answer(q["question_id"], t, q["text"])
                                   for q, t in zip(questions, texts)])


def test_subtask_score_pairs_and_totals(files, llava_answer):
    root = "MME_Benchmark_release_version"
    qs = _task(files, root, "existence", [("01", "Is there a cat?", "Yes"), ("01", "Is there a dog?", "No"),
                                          ("02", "Is there a car?", "Yes"), ("02", "Is there a bus?", "No")])
    qs += _task(files, root, "artwork", [("10002", "Is this by Monet?", "Yes"),
                                         ("10002", "Is this by Manet?", "No")], layout="yn")
    qs += _task(files, root, "code_reasoning", [("0020", "Is the output 3?", "No"),
                                                ("0020", "Is the output 4?", "Yes")])
    # existence: image 01 both right, image 02 one right -> acc 3/4, acc+ 1/2 -> 125.
    # artwork: both right -> 200.  code_reasoning: 'Maybe' is other -> acc 1/2, acc+ 0 -> 50.
    answers = _answers(files, llava_answer, qs, ["Yes", "No", "Yes", "Yes", "yes", "NO", "Maybe", "Yes"])
    block = mme.score(answers, files.root + "/" + root)
    assert block["per_task"]["existence"] == pytest.approx(125.0)
    assert block["per_task"]["artwork"] == pytest.approx(200.0)
    assert block["per_task"]["code_reasoning"] == pytest.approx(50.0)
    assert block["perception"] == pytest.approx(325.0)
    assert block["cognition"] == pytest.approx(50.0)
    assert block["total"] == pytest.approx(375.0)
    assert block["per_task_detail"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "n": 4}
    assert not block["complete"] and "count" in block["missing_tasks"]


def test_double_space_gt_question_and_yes_no_suffix(files, llava_answer):
    root = "MME"
    files.text(f"{root}/color/01.txt", "Is it red?  Please answer yes or no.\tYes\n"
                                       "Is it blue?  Please answer yes or no.\tNo\n")
    qs = [{"question_id": "color/01.jpg", "text": f"Is it red?\n{SHORT}"},
          {"question_id": "color/01.jpg", "text": f"Is it blue?\n{SHORT}"}]
    block = mme.score(_answers(files, llava_answer, qs, ["Yes", "No"]), files.root + "/" + root)
    assert block["per_task"]["color"] == pytest.approx(200.0)


def test_tab_and_newline_deviation(files, llava_answer):
    qs = _task(files, "MME", "OCR", [("01", "Is it A?", "Yes"), ("01", "Is it B?", "No")])
    answers = _answers(files, llava_answer, qs, ["Yes\tmaybe", "no\nway"])
    block = mme.score(answers, files.root + "/MME")
    assert block["per_task"]["OCR"] == pytest.approx(200.0)
    assert len(block["deviations"]) == 3  # two outputs cleaned + the missing-subtasks note


def test_misaligned_pair_raises(files, llava_answer):
    qs = _task(files, "MME", "count", [("01", "Two cats?", "Yes"), ("02", "Two dogs?", "No"),
                                       ("01", "Three cats?", "No"), ("02", "Three dogs?", "Yes")])
    with pytest.raises(ScoreError, match="pairs 'count/01.png' with 'count/02.png'"):
        mme.score(_answers(files, llava_answer, qs, ["Yes"] * 4), files.root + "/MME")


def test_odd_count_and_unknown_gt(files, llava_answer):
    qs = _task(files, "MME", "scene", [("01", "Is it a beach?", "Yes"), ("01", "Is it a city?", "No")])
    with pytest.raises(ScoreError, match="must be even"):
        mme.score(_answers(files, llava_answer, qs[:1], ["Yes"]), files.root + "/MME")
    bad = [dict(qs[0], text=f"Is it a forest?\n{SHORT}"), qs[1]]
    with pytest.raises(ScoreError, match="no GT for scene/01.txt"):
        mme.score(_answers(files, llava_answer, bad, ["Yes", "No"]), files.root + "/MME")


def test_full_perception_cognition_sums(files, llava_answer):
    qs = []
    for task in mme.PERCEPTION + mme.COGNITION:
        qs += _task(files, "MME", task, [("01", "Q1?", "Yes"), ("01", "Q2?", "No")])
    texts = []
    for task in mme.PERCEPTION + mme.COGNITION:
        texts += ["Yes", "No"] if task in ("OCR", "code_reasoning") else ["Yes", "Yes"]
    questions = files.jsonl("q.jsonl", qs)
    block = mme.score(_answers(files, llava_answer, qs, texts), files.root + "/MME", questions)
    # Every other subtask: acc 1/2, acc+ 0 -> 50.  OCR / code_reasoning -> 200.
    assert block["perception"] == pytest.approx(9 * 50 + 200)
    assert block["cognition"] == pytest.approx(3 * 50 + 200)
    assert block["total"] == pytest.approx(650 + 350)
    assert block["complete"] and block["deviations"] == []
