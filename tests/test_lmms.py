"""The lmms-eval plugin, for real: lmms-eval's own `simple_evaluate` loads `duet_jax` through
its `lmms_eval.models` entry point and runs a local POPE task made from the miniature's
test split; its answers are `eval.py run`'s and its accuracy is `eval.py score`'s.

Needs lmms-eval and this package installed in the environment (`make test-lmms` makes
such a venv, `.venv-lmms`); skipped where lmms-eval is not installed (`make test`).
"""
import json

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

from duet_jax.evaluation.cli import main as eval_main  # noqa: E402
from duet_jax.miniature.dataset import DataConfig, eval_paths, generate  # noqa: E402
from duet_jax.resources import package_path  # noqa: E402

DATA = DataConfig(seed=3, train_images=1, val_pope_per_split=1, val_textvqa=1, val_gqa=1,
                  test_pope_per_split=4, test_textvqa=1, test_gqa=1)
MODEL = package_path("miniature", "pretrained")     # the shipped, trained miniature


def test_entry_point_names_the_plugin():
    from lmms_eval.models import get_model

    assert get_model("duet_jax").__name__ == "DuetJax"


def test_simple_evaluate_matches_eval_py(tmp_path):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from duet_jax.evaluation.lmms_task import TASK, write_pope_task

    data = generate(str(tmp_path / "data"), DATA)
    pope = eval_paths(data, "test", "pope")
    answers, summary = tmp_path / "pope.jsonl", tmp_path / "s.json"
    assert eval_main(["run", "--model", MODEL, "--benchmark", "pope", "--questions",
                      pope["questions"], "--images", pope["images"], "--answers", str(answers),
                      "--batch-size", "4"]) == 0
    assert eval_main(["score", "--benchmark", "pope", "--answers", str(answers),
                      "--annotations", pope["annotations"], "--questions", pope["questions"],
                      "--summary", str(summary)]) == 0
    per_split = json.loads(summary.read_text())["pope"]["per_split"]     # acc in percent
    expected = sum(s["acc"] * s["n"] for s in per_split.values()) / sum(
        s["n"] for s in per_split.values()) / 100

    tasks = write_pope_task(str(tmp_path / "tasks"), pope["questions"], pope["annotations"],
                            pope["images"])
    out = simple_evaluate(model="duet_jax", model_args=f"pretrained={MODEL}",
                          tasks=[TASK], batch_size=4, log_samples=True,
                          task_manager=TaskManager(include_path=tasks, include_defaults=False))
    got = out["results"][TASK]["pope_accuracy,none"]
    ours = {str(json.loads(line)["question_id"]): json.loads(line)["text"]
            for line in answers.read_text().splitlines()}
    theirs = {str(s["doc"]["question_id"]): s["resps"][0][0] for s in out["samples"][TASK]}
    print(f"lmms-eval pope_accuracy {got:.4f}, eval.py score {expected:.4f}, "
          f"{len(theirs)} questions, answers {sorted(set(theirs.values()))}")
    assert theirs == ours                       # the same answers, question by question
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.0 < got < 1.0 and len(theirs) == 3 * DATA.test_pope_per_split
