"""SEED-Bench v1 scorer (docs/EVAL.md §6): exact letter equality, answers looked up by
int(annotation question_id); per-type, all, image and video micro-accuracies.

A question without a usable answer line (missing, or answered under a str id) scores
as wrong and is counted; it is never an error (the official script prints its
accuracies before it fails), so `eval.py score` still writes the summary.
"""
from __future__ import annotations

from .common import ScoreError, index_unique, percent, read_json, read_jsonl, require_fields, require_str


def lookup_id(annotation_id):
    """The key the official script looks answers up with: int(id), or the id itself."""
    try:
        return int(annotation_id)
    except (TypeError, ValueError):
        return annotation_id


def load_annotations(path: str) -> tuple[list[dict], dict]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ScoreError(f"{path}: expected SEED-Bench.json (an object with a 'questions' list)")
    for i, q in enumerate(data["questions"]):
        for field in ("question_id", "question_type_id", "data_type", "answer"):
            if field not in q:
                raise ScoreError(f"{path}: questions[{i}] has no '{field}'")
    names = {type_id: name for name, type_id in data.get("question_type", {}).items()}
    return data["questions"], names


def score(answers_path: str, annotations_path: str, questions_path: str | None = None) -> dict:
    answers = read_jsonl(answers_path)
    require_fields(answers_path, answers, ("question_id", "text"))
    require_str(answers_path, answers, "text")
    results = index_unique(answers_path, answers, key=lambda a: a["question_id"])
    annotations, type_names = load_annotations(annotations_path)

    population = "all annotation questions (official)"
    if questions_path is not None:
        questions = read_jsonl(questions_path)
        require_fields(questions_path, questions, ("question_id",))
        wanted = {q["question_id"] for q in questions}
        kept = [q for q in annotations if lookup_id(q["question_id"]) in wanted]
        if len(kept) < len(annotations):
            population = "annotation questions in --questions"
        annotations = kept
    if not annotations:
        raise ScoreError(f"{annotations_path}: no annotation questions to score")

    type_counts: dict = {}
    correct_counts: dict = {}
    kinds = {"all": [0, 0], "image": [0, 0], "video": [0, 0]}
    missing, matched = 0, set()
    for q in annotations:
        type_id = q["question_type_id"]
        type_counts[type_id] = type_counts.get(type_id, 0) + 1
        key = lookup_id(q["question_id"])
        hit = False
        if key not in results:
            missing += 1
            correct_counts[type_id] = correct_counts.get(type_id, 0)
        else:
            matched.add(key)
            hit = results[key]["text"] == q["answer"]
            if hit:
                correct_counts[type_id] = correct_counts.get(type_id, 0) + 1
        for kind in ("all", q["data_type"]):
            if kind in kinds:
                kinds[kind][0] += hit
                kinds[kind][1] += 1

    deviations = []
    per_type, per_type_n = {}, {}
    for type_id in sorted(type_counts, key=str):
        name = type_names.get(type_id, str(type_id))
        if type_id not in correct_counts:
            # Officially a KeyError (no correct and no missing answer); docs/EVAL.md §10: 0.
            deviations.append(f"type {name!r}: every answer wrong (official KeyError); reported 0")
        per_type[name] = percent(correct_counts.get(type_id, 0), type_counts[type_id])
        per_type_n[name] = type_counts[type_id]
    if missing:
        deviations.append(f"{missing} question(s) have no answer line (str ids count as missing); "
                          "scored wrong, as the official accuracies do")
    unmatched = len(results) - len(matched)
    return {"all": percent(*kinds["all"]), "image": percent(*kinds["image"]),
            "video": percent(*kinds["video"]), "per_type": per_type, "per_type_n": per_type_n,
            "n": kinds["all"][1], "n_image": kinds["image"][1], "n_video": kinds["video"][1],
            "n_missing": missing, "n_unmatched_answers": unmatched,
            "image_only": kinds["video"][1] == 0, "population": population,
            "deviations": deviations}
