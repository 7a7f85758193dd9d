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


@pytest.fixture(scope="module")
def mini_duet(tmp_path_factory):
    """The miniature's DUET-64 (Stage 2 at LM layers 2 and 3 of 4) as a reduction file."""
    from duet_jax.miniature.presets import duet

    path = tmp_path_factory.mktemp("reduction") / "mini-duet-64.json"
    path.write_text(json.dumps(duet(64, 4).to_dict()))
    return str(path)


def test_entry_point_names_the_plugin():
    from lmms_eval.models import get_model

    assert get_model("duet_jax").__name__ == "DuetJax"


@pytest.mark.parametrize("reduced", [False, True], ids=["unreduced", "mini-duet-64"])
def test_simple_evaluate_matches_eval_py(tmp_path, mini_duet, reduced):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from duet_jax.evaluation.lmms_task import TASK, write_pope_task

    data = generate(str(tmp_path / "data"), DATA)
    pope = eval_paths(data, "test", "pope")
    answers, summary = tmp_path / "pope.jsonl", tmp_path / "s.json"
    reduction = ["--reduction", mini_duet] if reduced else []
    assert eval_main(["run", "--model", MODEL, "--benchmark", "pope", "--questions",
                      pope["questions"], "--images", pope["images"], "--answers", str(answers),
                      "--batch-size", "4", *reduction]) == 0
    assert eval_main(["score", "--benchmark", "pope", "--answers", str(answers),
                      "--annotations", pope["annotations"], "--questions", pope["questions"],
                      "--summary", str(summary)]) == 0
    per_split = json.loads(summary.read_text())["pope"]["per_split"]     # acc in percent
    expected = sum(s["acc"] * s["n"] for s in per_split.values()) / sum(
        s["n"] for s in per_split.values()) / 100

    tasks = write_pope_task(str(tmp_path / "tasks"), pope["questions"], pope["annotations"],
                            pope["images"])
    model_args = f"pretrained={MODEL}" + (f",reduction={mini_duet}" if reduced else "")
    out = simple_evaluate(model="duet_jax", model_args=model_args,
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


class _Request:
    def __init__(self, *args):
        self.args = args


def test_loglikelihood_agrees_with_greedy_generation(tmp_path, mini_duet):
    """The continuation the reduced model generates greedily is `is_greedy` and scores
    above the other answer: the log-probabilities read the right (reduced) rows."""
    from PIL import Image

    from duet_jax.lmms import DuetJax

    data = generate(str(tmp_path / "data"), DATA)
    pope = eval_paths(data, "test", "pope")
    questions = [json.loads(x) for x in open(pope["questions"])][:3]
    lm = DuetJax(pretrained=MODEL, reduction=mini_duet, batch_size=1)
    docs = {i: {"image": f"{pope['images']}/{q['image']}"} for i, q in enumerate(questions)}
    lm.task_dict = {"t": {"test": docs}}
    visual = lambda doc: [Image.open(doc["image"])]     # noqa: E731
    for i, q in enumerate(questions):
        gen = lm.generate_until([_Request(q["text"], {"max_new_tokens": 1, "until": []}, visual,
                                          i, "t", "test")])[0]
        assert gen in ("Yes", "No"), gen
        other = "No" if gen == "Yes" else "Yes"
        (best, greedy), (worse, not_greedy) = lm.loglikelihood(
            [_Request(q["text"], answer, visual, i, "t", "test") for answer in (gen, other)])
        assert greedy and not not_greedy and best > worse, (gen, best, worse)
