"""ScienceQA scorer (docs/EVAL.md §5): three letter-parse rules, overall Accuracy over the
test split (missing prediction = FAILED, text-only) and IMG-Accuracy over the problems
whose prediction prompt contains '<image>'."""
from __future__ import annotations

import os
import re
import sys

from .common import (ScoreError, index_unique, match_answers, percent, read_json, read_jsonl,
                     require_dir, require_fields, require_str, show_ids)

# A list, not a string: `'' in "ABCDE"` is True, which would accept an empty output.
OPTIONS = ["A", "B", "C", "D", "E"]
# The trailing '.' matches any character except a newline (the official pattern).
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"


def parse_letter(text: str) -> str:
    """The letter the official script extracts, or 'FAILED' (first rule that applies wins)."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def prediction_index(letter: str, num_choices: int) -> int:
    """Option index of a parsed letter, -1 when FAILED or beyond the problem's choices."""
    return OPTIONS.index(letter) if letter in OPTIONS[:num_choices] else -1


def load_problems(folder: str, split: str = "test") -> tuple[list[str], dict]:
    require_dir(folder, "the folder holding problems.json and pid_splits.json")
    splits = read_json(os.path.join(folder, "pid_splits.json"))
    problems = read_json(os.path.join(folder, "problems.json"))
    if not isinstance(splits, dict) or split not in splits:
        raise ScoreError(f"{folder}/pid_splits.json: no {split!r} split")
    if not isinstance(problems, dict):
        raise ScoreError(f"{folder}/problems.json: expected an object keyed by problem id")
    for pid in splits[split]:
        problem = problems.get(pid)
        if problem is None:
            raise ScoreError(f"{folder}/problems.json: no problem {pid!r} of the {split} split")
        for field in ("choices", "answer"):
            if field not in problem:
                raise ScoreError(f"{folder}/problems.json: problem {pid!r} has no '{field}'")
    return list(splits[split]), problems


def score(answers_path: str, annotations_path: str, questions_path: str | None = None) -> dict:
    answers = read_jsonl(answers_path)
    require_fields(answers_path, answers, ("question_id", "prompt", "text"))
    require_str(answers_path, answers, "text")
    require_str(answers_path, answers, "prompt")
    predictions = index_unique(answers_path, answers, key=lambda a: a["question_id"])
    split_ids, problems = load_problems(annotations_path)

    population = "test split of pid_splits.json (official)"
    if questions_path is not None:
        questions = read_json(questions_path)
        if not isinstance(questions, list):
            raise ScoreError(f"{questions_path}: expected the ScienceQA JSON list (llava_test_CQM-A.json)")
        for i, q in enumerate(questions):
            if not isinstance(q, dict) or "id" not in q:
                raise ScoreError(f"{questions_path}: entry {i} has no 'id'")
        match_answers(answers_path, answers, questions_path, questions,
                      key=lambda q: q["id"], answer_key=lambda a: a["question_id"])
        wanted = {q["id"] for q in questions}
        outside = sorted(wanted - set(split_ids))
        if outside:
            raise ScoreError(f"{questions_path}: {len(outside)} id(s) not in the test split of "
                             f"{annotations_path}/pid_splits.json (e.g. {show_ids(outside)})")
        if len(wanted) < len(split_ids):
            population = "test-split problems in --questions"
        split_ids = [pid for pid in split_ids if pid in wanted]
    else:
        # The official eval_science_qa.py scores the split and never reads other ids.
        in_split = set(split_ids)
        extra = [qid for qid in predictions if qid not in in_split]
        if extra:
            print(f"warning: {answers_path}: {len(extra)} answer(s) for ids outside the test split "
                  f"ignored, as the official script ignores them (e.g. {show_ids(extra)})",
                  file=sys.stderr)

    correct = total = img_correct = img_total = missing = 0
    for pid in split_ids:
        problem = problems[pid]
        if pid in predictions:
            text, prompt = predictions[pid]["text"], predictions[pid]["prompt"]
        else:
            text, prompt = FAILED, "Unknown"  # the official stand-in for a missing prediction
            missing += 1
        hit = prediction_index(parse_letter(text), len(problem["choices"])) == problem["answer"]
        correct += hit
        total += 1
        if "<image>" in prompt:
            img_correct += hit
            img_total += 1
    if total == 0:
        raise ScoreError(f"{annotations_path}: the test split is empty")
    deviations = []
    if img_total == 0:
        deviations.append("no prediction prompt contains <image>; IMG accuracy is null "
                          "(the official script divides by zero)")
    return {"accuracy": percent(correct, total), "img_accuracy": percent(img_correct, img_total),
            "n": total, "n_img": img_total, "n_missing": missing, "population": population,
            "n_ignored": len(extra) if questions_path is None else 0, "deviations": deviations}
