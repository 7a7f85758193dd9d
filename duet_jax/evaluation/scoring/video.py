"""Video QA scorer (TGIF / MSVD / MSRVTT, docs/EVAL.md §7).

* Lexical proxy (default, offline): m4c-normalise GT and prediction; a hit when they
  are equal or the GT tokens occur as a contiguous run of the prediction's tokens.
  It is a proxy, never the paper's metric.
* Official judge aggregation, applied to replies from any judge: `count` first, then
  `int(score)` (a failure skips the rest of the item but keeps it counted), then
  'yes' / 'no' substring of pred.lower(). Accuracy = yes/(yes+no).
"""
from __future__ import annotations

import os

from .common import (ScoreError, index_unique, match_answers, percent, read_json, read_jsonl,
                     require_dir, require_fields, require_str, show_ids, where)
from .m4c import normalize_answer

_SUFFIX = "_Zero_Shot_QA"


def dataset_name(folder: str) -> str:
    """'MSVD_Zero_Shot_QA/' -> 'msvd' (the summary key of that dataset)."""
    base = os.path.basename(os.path.normpath(folder))
    return (base[:-len(_SUFFIX)] if base.endswith(_SUFFIX) else base).lower()


def lexical_hit(gt: str, prediction: str) -> bool:
    """Normalised GT equals the normalised prediction or is a whole-token run inside it.
    An empty normalised GT only matches an empty prediction."""
    gt_tokens = normalize_answer(gt).split()
    pred_tokens = normalize_answer(prediction).split()
    if gt_tokens == pred_tokens:
        return True
    width = len(gt_tokens)
    return width > 0 and any(pred_tokens[i:i + width] == gt_tokens
                             for i in range(len(pred_tokens) - width + 1))


def aggregate_judge(replies: dict) -> dict:
    """The official aggregation over {key: [reply_dict, qa]} items, quirks kept."""
    score_sum = count = yes = no = 0
    for result in replies.values():
        # The official loop wraps this in a bare try/except: whatever fails (missing
        # key, int('4.5'), a non-str pred) skips the rest of the item; count stays.
        try:
            count += 1
            score_sum += int(result[0]["score"])
            pred = result[0]["pred"].lower()
            if "yes" in pred:
                yes += 1
            elif "no" in pred:
                no += 1
        except Exception:  # noqa: BLE001 - mirrors the official bare except
            continue
    deviations = []
    if yes + no == 0:
        deviations.append("no judge reply parsed as yes/no; accuracy is null (official ZeroDivisionError)")
    return {"accuracy": percent(yes, yes + no),
            "average_score": score_sum / count if count else None,
            "yes": yes, "no": no, "judge_count": count, "deviations": deviations}


def load_judge_replies(path: str) -> dict:
    """A folder of <id>.json files, or one combined {id: [reply, qa]} JSON file."""
    if os.path.isdir(path):
        replies = {}
        for name in sorted(os.listdir(path)):
            if name.endswith(".json"):
                replies[name[:-5]] = read_json(os.path.join(path, name))
        if not replies:
            raise ScoreError(f"{path}: no <id>.json judge replies in this folder")
        return replies
    data = read_json(path)
    if not isinstance(data, dict):
        raise ScoreError(f"{path}: expected the combined judge file, an object {{id: [reply, qa]}}")
    return data


def load_gt(folder: str) -> tuple[list, dict]:
    require_dir(folder, "a {TGIF,MSVD,MSRVTT}_Zero_Shot_QA/ folder with test_q.json and test_a.json")
    questions = read_json(os.path.join(folder, "test_q.json"))
    gt_answers = read_json(os.path.join(folder, "test_a.json"))
    for name, data in (("test_q.json", questions), ("test_a.json", gt_answers)):
        if not isinstance(data, list) or not all(isinstance(r, dict) and "question_id" in r for r in data):
            raise ScoreError(f"{folder}/{name}: expected a JSON list of objects with 'question_id'")
    for r in gt_answers:
        if "answer" not in r:
            raise ScoreError(f"{folder}/test_a.json: question {r['question_id']!r} has no 'answer'")
    return questions, {r["question_id"]: r["answer"] for r in gt_answers}


def score(answers_path: str, annotations_path: str, questions_path: str | None = None,
          judge_replies: str | None = None, judge_name: str | None = None) -> dict:
    """-> {dataset: block}; the block carries lexical and (with replies) judge metrics."""
    answers = read_jsonl(answers_path)
    require_fields(answers_path, answers, ("id", "pred"))
    require_str(answers_path, answers, "pred")
    index_unique(answers_path, answers, key=lambda a: a["id"], what="id")
    if not answers:
        raise ScoreError(f"{answers_path}: no answer lines to score")
    _, gt = load_gt(annotations_path)
    if questions_path is not None:
        questions = read_json(questions_path)
        if not isinstance(questions, list) or not all(isinstance(q, dict) and "question_id" in q
                                                      for q in questions):
            raise ScoreError(f"{questions_path}: expected test_q.json, a list of {{video_name, question, question_id}}")
        match_answers(answers_path, answers, questions_path, questions,
                      key=lambda q: q["question_id"], answer_key=lambda a: a["id"])

    hits = 0
    for answer in answers:
        if answer["id"] not in gt:
            raise ScoreError(f"{where(answers_path, answer)}: id {answer['id']!r} is not in "
                             f"{annotations_path}/test_a.json")
        expected = gt[answer["id"]]
        if "answer" in answer and answer["answer"] != expected:
            raise ScoreError(f"{where(answers_path, answer)}: GT answer {answer['answer']!r} differs from "
                             f"test_a.json's {expected!r}; the answer file is misaligned")
        hits += lexical_hit(str(expected), answer["pred"])

    block = {"judge": None, "accuracy": None, "average_score": None,
             "lexical_accuracy": percent(hits, len(answers)), "n": len(answers), "deviations": []}
    if judge_replies is not None:
        replies = load_judge_replies(judge_replies)
        ids = {str(a["id"]) for a in answers}
        missing, extra = sorted(ids - set(replies)), sorted(set(replies) - ids)
        if missing:
            raise ScoreError(f"{judge_replies}: {len(missing)} answer(s) have no judge reply (e.g. "
                             f"{show_ids(missing)}); the official loop retries until every item has one")
        if extra:
            raise ScoreError(f"{judge_replies}: {len(extra)} judge reply(ies) for ids not in "
                             f"{answers_path} (e.g. {show_ids(extra)}); judge replies of another run?")
        judged = aggregate_judge(replies)
        block.update(judge=judge_name or _default_judge_name(judge_replies),
                     accuracy=judged["accuracy"], average_score=judged["average_score"],
                     yes=judged["yes"], no=judged["no"], judge_count=judged["judge_count"])
        block["deviations"] += judged["deviations"]
    return {dataset_name(annotations_path): block}


def _default_judge_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return base[:-5] if base.endswith(".json") else base
