"""GQA scorer (docs/EVAL.md §3): trailing-period strip + lowercase, then exact match
against the balanced testdev answers. Binary = structural type != 'query'."""
from __future__ import annotations

from .common import (ScoreError, index_unique, match_answers, percent, read_json, read_jsonl,
                     require_fields, require_str, show_ids)


def convert_prediction(text: str) -> str:
    """scripts/convert_gqa_for_eval.py: strip every trailing '.', then lowercase.
    No whitespace strip, no article or punctuation handling."""
    return text.rstrip(".").lower()


def load_questions_json(path: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ScoreError(f"{path}: expected testdev_balanced_questions.json (an object keyed by question id)")
    for qid, question in data.items():
        for field in ("answer", "isBalanced", "types"):
            if field not in question:
                raise ScoreError(f"{path}: question {qid!r} has no '{field}'")
    return data


def score(answers_path: str, annotations_path: str, questions_path: str | None = None) -> dict:
    answers = read_jsonl(answers_path)
    require_fields(answers_path, answers, ("question_id", "text"))
    require_str(answers_path, answers, "text")
    predictions = {qid: convert_prediction(a["text"]) for qid, a in
                   index_unique(answers_path, answers, key=lambda a: a["question_id"]).items()}
    gqa = load_questions_json(annotations_path)

    population = "balanced annotation questions (official)"
    balanced = [qid for qid, q in gqa.items() if q["isBalanced"]]
    if questions_path is not None:
        questions = read_jsonl(questions_path)
        require_fields(questions_path, questions, ("question_id",))
        match_answers(answers_path, answers, questions_path, questions, key=lambda r: r["question_id"])
        unknown = [q["question_id"] for q in questions if q["question_id"] not in gqa]
        if unknown:
            raise ScoreError(f"{questions_path}: {len(unknown)} question id(s) not in {annotations_path} "
                             f"(e.g. {show_ids(unknown)})")
        wanted = {q["question_id"] for q in questions}
        if len(wanted) < len(balanced):
            population = "balanced annotation questions in --questions"
        balanced = [qid for qid in balanced if qid in wanted]
    else:
        extra = [qid for qid in predictions if qid not in gqa]
        if extra:
            raise ScoreError(f"{answers_path}: {len(extra)} answer(s) for question ids not in "
                             f"{annotations_path} (e.g. {show_ids(extra)})")

    missing = [qid for qid in balanced if qid not in predictions]
    if missing:
        # The official script aborts here (KeyError); docs/EVAL.md §10: raise.
        raise ScoreError(f"{answers_path}: no prediction for {len(missing)} balanced question(s) "
                         f"(e.g. {show_ids(missing)}); GQA scores every balanced question")
    if not balanced:
        raise ScoreError(f"{annotations_path}: no balanced questions to score")

    correct = {"all": 0, "binary": 0, "open": 0}
    count = {"all": 0, "binary": 0, "open": 0}
    per_structural: dict[str, list[int]] = {}
    for qid in balanced:
        question = gqa[qid]
        hit = int(predictions[qid] == question["answer"])
        structural = question["types"].get("structural")
        kind = "open" if structural == "query" else "binary"
        for bucket in ("all", kind):
            correct[bucket] += hit
            count[bucket] += 1
        per_structural.setdefault(str(structural), [0, 0])
        per_structural[str(structural)][0] += hit
        per_structural[str(structural)][1] += 1
    return {"accuracy": percent(correct["all"], count["all"]),
            "binary": percent(correct["binary"], count["binary"]),
            "open": percent(correct["open"], count["open"]),
            "per_structural_type": {t: percent(c, n) for t, (c, n) in sorted(per_structural.items())},
            "n": count["all"], "n_binary": count["binary"], "n_open": count["open"],
            "population": population, "deviations": []}
