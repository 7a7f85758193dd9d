"""TextVQA scorer (docs/EVAL.md §2): prompt -> question recovery, m4c normalisation,
soft 10-answer accuracy. Accuracy is the mean over answer lines, x100."""
from __future__ import annotations

import re

from .common import ScoreError, read_answer_lines, match_answers, read_json, read_jsonl, require_fields, require_str, where
from .m4c import normalize_answer

_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_from_prompt(prompt: str) -> str:
    """Recover the lower-cased question from an answer line's `prompt`."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_QUESTION.search(prompt)
        if match is None:
            raise ScoreError("prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:'")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ScoreError(
            f"cannot recover the question from a prompt with {len(lines)} line(s); expected "
            "'question\\nReference OCR token: ...\\nsuffix' or 'question\\nsuffix'")
    return question.lower()


def soft_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """VQA soft score: (1/10) sum_j min(1, #{k != j: g_k == p} / 3), summed in the
    official order so the float result matches bit for bit."""
    p = normalize_answer(prediction)
    gts = [normalize_answer(g) for g in gt_answers]
    matches = sum(g == p for g in gts)
    accs = [min(1, float(matches - (g == p)) / 3) for g in gts]
    return sum(accs) / len(accs)


def load_annotations(path: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ScoreError(f"{path}: expected TextVQA_0.5.1_val.json (an object with a 'data' list)")
    table = {}
    for i, record in enumerate(data["data"]):
        for field in ("image_id", "question", "answers"):
            if field not in record:
                raise ScoreError(f"{path}: data[{i}] has no '{field}'")
        if len(record["answers"]) != 10:
            raise ScoreError(f"{path}: data[{i}] has {len(record['answers'])} answers; TextVQA needs exactly 10")
        # A later duplicate key replaces the earlier one, as in the official dict.
        table[(record["image_id"], record["question"].lower())] = record["answers"]
    return table


def score(answers_path: str, annotations_path: str, questions_path: str | None = None) -> dict:
    answers = read_answer_lines(answers_path)
    if questions_path is not None:
        questions = read_jsonl(questions_path)
        require_fields(questions_path, questions, ("question_id", "text"))
        # question_id is the image id (not unique), so match on (id, text == prompt).
        match_answers(answers_path, answers, questions_path, questions,
                      key=lambda q: (q["question_id"], q["text"]),
                      answer_key=lambda a: (a["question_id"], a["prompt"]))
    table = load_annotations(annotations_path)
    scores = []
    for answer in answers:
        try:
            question = question_from_prompt(answer["prompt"])
        except ScoreError as e:
            raise ScoreError(f"{where(answers_path, answer)}: {e}") from None
        key = (answer["question_id"], question)
        if key not in table:
            raise ScoreError(
                f"{where(answers_path, answer)}: no annotation for image_id {key[0]!r} with question "
                f"{key[1]!r} in {annotations_path}")
        scores.append(soft_accuracy(answer["text"], table[key]))
    return {"accuracy": 100.0 * (sum(scores) / len(scores)), "n": len(scores),
            "population": "answer lines (official)", "deviations": []}
