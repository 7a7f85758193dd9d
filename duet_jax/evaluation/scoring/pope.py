"""POPE scorer (docs/EVAL.md §1): first-sentence / comma-drop / space-split yes-no parse,
per-split confusion counts, reported number = mean F1 over the splits x100.

Labels are paired with the question file's questions of the same split by position
(the official question and label files share that order); answers are matched to
questions by question_id, and any missing, extra or surplus line is an error.
"""
from __future__ import annotations

import os
import re

from .common import (ScoreError, index_unique, match_answers, percent, read_jsonl, require_dir,
                     require_fields, require_str)

_LABEL_FILE = re.compile(r"^coco_pope_(.+)\.json$")
_NO_WORDS = ("No", "not", "no")


def parse_yes_no(text: str) -> str:
    """'yes' or 'no' exactly as llava/eval/eval_pope.py decides it."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in _NO_WORDS for w in words) else "yes"


def split_metrics(predictions: list[str], labels: list[str]) -> tuple[dict, list[str]]:
    """Confusion counts and metrics (fractions) for one split; returns (metrics,
    deviations). Any label other than 'no' is positive, as officially."""
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels, strict=True):
        positive_pred, positive_label = pred == "yes", label != "no"
        tp += positive_pred and positive_label
        fp += positive_pred and not positive_label
        tn += not positive_pred and not positive_label
        fn += not positive_pred and positive_label
    deviations = []
    # The official code raises ZeroDivisionError here; docs/EVAL.md §10 defines these as 0.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    if tp + fp == 0:
        deviations.append("precision has a zero denominator (no 'yes' predictions); set to 0")
    if tp + fn == 0:
        deviations.append("recall has a zero denominator (no 'yes' labels); set to 0")
    if precision + recall == 0:
        f1 = 0.0
        if tp + fp and tp + fn:
            deviations.append("precision + recall = 0; F1 set to 0")
    else:
        f1 = 2 * precision * recall / (precision + recall)
    n = len(labels)
    metrics = {"acc": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
               "yes_ratio": predictions.count("yes") / n, "n": n,
               "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    return metrics, deviations


def load_labels(annotation_dir: str) -> dict[str, list[str]]:
    """{split: labels in file order} from coco_pope_<split>.json files (other files ignored)."""
    require_dir(annotation_dir, "the coco/ folder holding coco_pope_{adversarial,popular,random}.json")
    labels = {}
    for name in sorted(os.listdir(annotation_dir)):
        match = _LABEL_FILE.match(name)
        if match is None:
            continue
        path = os.path.join(annotation_dir, name)
        records = read_jsonl(path)
        require_fields(path, records, ("label",))
        labels[match.group(1)] = [r["label"] for r in records]
    if not labels:
        raise ScoreError(f"{annotation_dir}: no coco_pope_<split>.json label files found")
    return labels


def score(answers_path: str, annotations_path: str, questions_path: str | None = None) -> dict:
    if questions_path is None:
        raise ScoreError("pope needs --questions (llava_pope_test.jsonl): it gives each answer's split")
    questions = read_jsonl(questions_path)
    require_fields(questions_path, questions, ("question_id", "category"))
    index_unique(questions_path, questions, key=lambda q: q["question_id"])
    answers = read_jsonl(answers_path)
    require_fields(answers_path, answers, ("question_id", "text"))
    require_str(answers_path, answers, "text")
    answer_by_id = index_unique(answers_path, answers, key=lambda a: a["question_id"])
    match_answers(answers_path, answers, questions_path, questions, key=lambda r: r["question_id"])

    labels = load_labels(annotations_path)
    by_split: dict[str, list] = {}
    for q in questions:
        by_split.setdefault(q["category"], []).append(q["question_id"])
    unlabeled = sorted(set(by_split) - set(labels))
    if unlabeled:
        raise ScoreError(f"{annotations_path}: no coco_pope_{unlabeled[0]}.json for the questions "
                         f"of split {unlabeled[0]!r} in {questions_path}")

    per_split, raw, deviations = {}, {}, []
    for split, split_labels in labels.items():
        ids = by_split.get(split, [])
        if len(ids) != len(split_labels):
            # Officially zipped by position and silently truncated; docs/EVAL.md §10: raise.
            raise ScoreError(
                f"split {split!r}: {len(split_labels)} labels in coco_pope_{split}.json but "
                f"{len(ids)} questions/answers; labels pair with questions by position, so the "
                "counts must match (score the full question file)")
        predictions = [parse_yes_no(answer_by_id[qid]["text"]) for qid in ids]
        metrics, notes = split_metrics(predictions, split_labels)
        raw[split] = metrics
        per_split[split] = {k: (100.0 * v if k in ("acc", "precision", "recall", "f1", "yes_ratio")
                                else v) for k, v in metrics.items()}
        deviations += [f"{split}: {note}" for note in notes]
    f1s = [m["f1"] for m in raw.values()]
    accs = [m["acc"] for m in raw.values()]
    return {"f1_mean": percent(sum(f1s), len(f1s)), "acc_mean": percent(sum(accs), len(accs)),
            "per_split": per_split, "n": len(answers), "deviations": deviations}
