"""MME scorer (docs/EVAL.md §4): the LLaVA answer -> TSV conversion and the MME toolkit's
calculation. Subtask score = 100*acc + 100*acc+; reported number = perception + cognition."""
from __future__ import annotations

import os

from .common import (SHORT_ANSWER, ScoreError, read_answer_lines, index_unique, match_answers, read_jsonl, require_dir,
                     require_fields, require_str, where)

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_YES_NO_SUFFIX = " Please answer yes or no."


def parse_prediction(text: str) -> str:
    """'yes', 'no' or 'other' from a lower-cased prediction, as calculation.py decides:
    exact yes/no, else look only at the first 4 characters (yes wins over no)."""
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def gt_question(prompt: str, category: str, txt_name: str, gt: dict) -> str:
    """The GT key question from an answer prompt (convert_answer_to_mme.py)."""
    question = prompt
    if SHORT_ANSWER in question:
        question = question.replace(SHORT_ANSWER, "").strip()
    if "Please answer yes or no." not in question:
        question = question + _YES_NO_SUFFIX
        if (category, txt_name, question) not in gt:
            # Some MME files put two spaces before "Please".
            question = question.replace(_YES_NO_SUFFIX, " " + _YES_NO_SUFFIX)
    return question


def load_ground_truth(root: str, categories: set[str]) -> dict:
    """{(category, txt_name, question): answer} for the given subtask folders.
    A subtask with an images/ folder keeps its txt files in questions_answers_YN/."""
    require_dir(root, "the MME_Benchmark_release_version/ folder")
    gt = {}
    for category in sorted(categories):
        folder = os.path.join(root, category)
        if not os.path.isdir(folder):
            raise ScoreError(f"{root}: no sub-folder {category!r} for the answers of that subtask")
        if os.path.isdir(os.path.join(folder, "images")):
            folder = os.path.join(folder, "questions_answers_YN")
            if not os.path.isdir(folder):
                raise ScoreError(f"{folder}: missing (subtasks with images/ keep their txt files there)")
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".txt"):
                continue
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.readlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ScoreError(f"{path}: cannot read ({e})") from None
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise ScoreError(f"{path}:{number}: expected 'question<TAB>answer', got {len(fields)} field(s)")
                gt[(category, name, fields[0])] = fields[1]
    return gt


def score(answers_path: str, annotations_path: str, questions_path: str | None = None) -> dict:
    answers = read_answer_lines(answers_path)
    if questions_path is not None:
        questions = read_jsonl(questions_path)
        require_fields(questions_path, questions, ("question_id", "text"))
        # question_id is the image (two questions each), so match on (id, text == prompt).
        index_unique(answers_path, answers, key=lambda a: (a["question_id"], a["prompt"]),
                     what="(question_id, prompt)")
        match_answers(answers_path, answers, questions_path, questions,
                      key=lambda q: (q["question_id"], q["text"]),
                      answer_key=lambda a: (a["question_id"], a["prompt"]))

    known = set(PERCEPTION) | set(COGNITION)
    by_task: dict[str, list[tuple[dict, str, str]]] = {}
    for answer in answers:
        qid = answer["question_id"]
        if not isinstance(qid, str) or "/" not in qid:
            raise ScoreError(f"{where(answers_path, answer)}: MME question_id must be '<subtask>/<file>', got {qid!r}")
        category = qid.split("/")[0]
        if category not in known:
            raise ScoreError(f"{where(answers_path, answer)}: unknown MME subtask {category!r}")
        by_task.setdefault(category, [])
    gt = load_ground_truth(annotations_path, set(by_task))

    deviations = []
    for answer in answers:
        qid = answer["question_id"]
        category = qid.split("/")[0]
        txt_name = qid.split("/")[-1].split(".")[0] + ".txt"
        question = gt_question(answer["prompt"], category, txt_name, gt)
        if (category, txt_name, question) not in gt:
            raise ScoreError(f"{where(answers_path, answer)}: no GT for {category}/{txt_name} question "
                             f"{question!r} in {annotations_path}")
        text = answer["text"]
        # A tab or line break would break the official TSV line (docs/EVAL.md §10).
        cleaned = text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
        if cleaned != text:
            deviations.append(f"{qid}: tab/newline in the model output replaced by spaces")
        by_task[category].append((answer, gt[(category, txt_name, question)], cleaned))

    per_task, detail = {}, {}
    for task, rows in by_task.items():
        if len(rows) % 2:
            raise ScoreError(f"{answers_path}: subtask {task!r} has {len(rows)} answers; MME pairs "
                             "consecutive lines (two questions per image), so the count must be even")
        correct = pairs_correct = 0
        for i in range(0, len(rows), 2):
            pair = rows[i:i + 2]
            if pair[0][0]["question_id"] != pair[1][0]["question_id"]:
                # Officially paired blindly by position; a misaligned pair would corrupt acc+.
                raise ScoreError(
                    f"{where(answers_path, pair[1][0])}: subtask {task!r} pairs {pair[0][0]['question_id']!r} "
                    f"with {pair[1][0]['question_id']!r}; keep each image's two answers adjacent")
            right = 0
            for answer, gt_answer, cleaned in pair:
                gt_answer = gt_answer.lower()
                if gt_answer not in ("yes", "no"):
                    raise ScoreError(f"{annotations_path}: GT answer {gt_answer!r} for "
                                     f"{answer['question_id']!r} is not yes/no")
                right += parse_prediction(cleaned.lower()) == gt_answer
            correct += right
            pairs_correct += right == 2
        acc, acc_plus = correct / len(rows), pairs_correct / (len(rows) // 2)
        task_score = 0
        task_score += acc * 100
        task_score += acc_plus * 100
        per_task[task] = task_score
        detail[task] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "n": len(rows)}

    perception = cognition = 0
    for task in PERCEPTION:
        perception += per_task.get(task, 0)
    for task in COGNITION:
        cognition += per_task.get(task, 0)
    missing = [t for t in PERCEPTION + COGNITION if t not in per_task]
    if missing:
        deviations.append(f"subtasks without answers (the official calculation crashes; "
                          f"summed as absent): {', '.join(missing)}")
    return {"perception": perception, "cognition": cognition, "total": perception + cognition,
            "per_task": {t: per_task[t] for t in PERCEPTION + COGNITION if t in per_task},
            "per_task_detail": detail, "missing_tasks": missing, "complete": not missing,
            "n": len(answers), "deviations": deviations}
