"""The local lmms-eval POPE task (duet_jax.evaluation.lmms_task), without lmms-eval: the docs
pair each question with its split's label, the prompt is the question file's text, and
process_results is the official yes/no parse (tests/test_lmms.py runs it in lmms-eval)."""
import importlib.util
import json

import yaml


def test_task_files_pair_labels_and_parse_officially(tmp_path):
    from duet_jax.evaluation.lmms_task import TASK, main
    from duet_jax.tiny import write_pope_sample

    pope = write_pope_sample(str(tmp_path / "pope"), per_split=2)
    out = tmp_path / "tasks"
    assert main(["--questions", pope["questions"], "--annotations", pope["annotations"],
                 "--images", pope["images"], "--out", str(out)]) == 0
    questions = [json.loads(x) for x in open(pope["questions"])]
    docs = [json.loads(x) for x in open(out / "docs.jsonl")]
    assert [d["question"] for d in docs] == [q["text"] for q in questions]
    for d in docs:
        labels = [json.loads(x) for x in open(f"{pope['annotations']}/coco_pope_{d['category']}.json")]
        assert {"question_id": int(d["question_id"]), "label": d["answer"]} in labels
    # the YAML's !function tags name utils.py's functions
    text = (out / f"{TASK}.yaml").read_text()
    config = yaml.safe_load(text.replace("!function ", ""))
    assert config["task"] == TASK and config["dataset_kwargs"]["data_files"]["test"] == \
        str(out / "docs.jsonl")
    spec = importlib.util.spec_from_file_location("duet_pope_utils", out / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = dict(docs[0], answer="no")
    assert utils.doc_to_text(doc, {}) == questions[0]["text"]
    assert utils.doc_to_visual(doc)[0].size[0] > 0
    assert utils.process_results(doc, ["No, there is not."])["pope_accuracy"] == 1.0
    assert utils.process_results(doc, ["Yes. No doubt."])["pope_accuracy"] == 0.0   # 1st sentence
    assert utils.process_results(dict(doc, answer="yes"), ["PPPP"])["pope_accuracy"] == 1.0


def test_missing_files_are_one_line(tmp_path, capsys):
    from duet_jax.evaluation.lmms_task import main

    assert main(["--questions", str(tmp_path / "nope.jsonl"), "--annotations", str(tmp_path),
                 "--images", str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
