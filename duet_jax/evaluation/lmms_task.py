"""A local lmms-eval task from official POPE files, scored by the official rule.

    python -m duet_jax.evaluation.lmms_task --questions llava_pope_test.jsonl \\
        --annotations coco --images val2014 --out lmms-tasks
    lmms-eval --model duet_jax --model_args pretrained=llava-jax,reduction=llava15-duet-64 \\
        --include_path lmms-tasks --tasks duet_pope --batch_size 8

`out` receives `duet_pope.yaml`, its `utils.py` and `docs.jsonl` (one line per question:
question_id, the question file's text, the absolute image path, the label, the split).
The prompt is the question file's text, as `eval.py run` sends it; `process_results`
parses each answer with `duet_jax.evaluation.scoring.pope.parse_yes_no` (the official
llava/eval/eval_pope.py rule), so `pope_accuracy` is the accuracy `eval.py score`
reports over the same answers (the mean of its per-split `acc` when the splits are of
one size). Nothing here imports lmms-eval or JAX.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from duet_jax.cli import Parser

TASK = "duet_pope"
YAML = """# Written by duet_jax.evaluation.lmms_task: POPE from local files, the official parse.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 128
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: pope_accuracy
    aggregation: mean
    higher_is_better: true
  - metric: pope_yes_ratio
    aggregation: mean
    higher_is_better: false
metadata:
  - version: 0.0
"""
UTILS = '''"""Written by duet_jax.evaluation.lmms_task (see there)."""
from PIL import Image

from duet_jax.evaluation.scoring.pope import parse_yes_no


def doc_to_visual(doc):
    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    pred = parse_yes_no(results[0].strip())
    label = "no" if doc["answer"] == "no" else "yes"     # any other label is positive
    return {"pope_accuracy": float(pred == label), "pope_yes_ratio": float(pred == "yes")}
'''


def write_pope_task(out: str, questions: str, annotations: str, images: str,
                    task: str = TASK) -> str:
    """Write the task folder `out` (for lmms-eval's `--include_path`); returns `out`."""
    from duet_jax.evaluation.scoring.pope import load_labels

    with open(questions, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    labels = load_labels(annotations)
    seen: dict = {}
    docs = []
    for q in rows:
        split = q["category"]
        k = seen[split] = seen.get(split, -1) + 1       # labels pair with questions by position
        docs.append({"question_id": str(q["question_id"]), "question": q["text"],
                     "image": os.path.abspath(os.path.join(images, q["image"])),
                     "answer": labels[split][k], "category": split})
    os.makedirs(out, exist_ok=True)
    docs_path = os.path.abspath(os.path.join(out, "docs.jsonl"))
    with open(docs_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    with open(os.path.join(out, f"{task}.yaml"), "w", encoding="utf-8") as f:
        f.write(YAML.format(task=task, docs=json.dumps(docs_path)))
    with open(os.path.join(out, "utils.py"), "w", encoding="utf-8") as f:
        f.write(UTILS)
    return out


def main(argv=None) -> int:
    p = Parser(prog="python -m duet_jax.evaluation.lmms_task",
               description="Write a local lmms-eval POPE task (official parse) from POPE files.")
    p.add_argument("--questions", required=True, help="llava_pope_test.jsonl")
    p.add_argument("--annotations", required=True, help="folder of coco_pope_<split>.json")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--out", required=True, help="task folder to write (--include_path)")
    p.add_argument("--task", default=TASK)
    args: argparse.Namespace = p.parse_args(argv)
    from duet_jax.evaluation.io import ScoreError

    try:
        write_pope_task(args.out, args.questions, args.annotations, args.images, args.task)
    except (OSError, KeyError, IndexError, ValueError, ScoreError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"lmms-eval task {args.task} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
