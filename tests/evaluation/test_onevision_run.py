"""`eval.py run` on a tiny LLaVA-OneVision checkpoint, images (POPE format) and videos (MSVD
format): official answer files whose answers equal the public API's unbatched greedy ones,
unreduced and with a OneVision preset."""
import importlib
import json
import os

import pytest

from tests.evaluation.test_video_run import msvd  # noqa: F401  (the frame-folder fixture)
from tests.helpers.tiny_checkpoint import write_pope_fixture
from tests.helpers.tiny_onevision import build_tiny_onevision_checkpoint

NEW = 4
RED = json.dumps({"name": "tiny-ov-duet", "stage1": {"dominant": 5, "contextual": 3, "width": 2,
                                                      "cls_token": False},
                  "stage2": {"layers": [1], "ratios": [0.5]}})


def _eval(*argv) -> int:
    return importlib.import_module("eval").main([str(a) for a in argv])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_onevision_checkpoint(str(tmp_path_factory.mktemp("ov") / "tiny-ov"))


@pytest.fixture(scope="module")
def pope(tmp_path_factory):
    return write_pope_fixture(str(tmp_path_factory.mktemp("pope")), image_size=112)


@pytest.mark.parametrize("reduction", [None, RED])
def test_eval_run_images(ckpt, pope, tmp_path, reduction):
    import duet_jax
    answers = str(tmp_path / "answers.jsonl")
    extra = ("--reduction", reduction) if reduction else ()
    assert _eval("run", "--model", ckpt, "--benchmark", "pope", "--questions", pope["questions"],
                 "--images", pope["images"], "--answers", answers, "--batch-size", 2,
                 "--max-new-tokens", NEW, *extra) == 0
    rows = [json.loads(line) for line in open(answers)]
    questions = [json.loads(q) for q in open(pope["questions"])]
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]
    model = duet_jax.load_llava(ckpt)
    for r, q in zip(rows, questions):
        (alone,) = model.generate([q["text"]], [os.path.join(pope["images"], q["image"])],
                                  max_new_tokens=NEW, reduction=reduction and json.loads(reduction))
        assert r["text"] == alone


@pytest.mark.parametrize("reduction", [None, RED])
def test_eval_run_videos(ckpt, msvd, tmp_path, reduction):  # noqa: F811
    import duet_jax
    answers = str(tmp_path / "answers.jsonl")
    extra = ("--reduction", reduction) if reduction else ()
    assert _eval("run", "--model", ckpt, "--benchmark", "video", "--questions",
                 msvd["questions"], "--images", msvd["videos"], "--answers", answers,
                 "--batch-size", 2, "--max-new-tokens", NEW, *extra) == 0
    rows = [json.loads(line) for line in open(answers)]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    model = duet_jax.load_llava(ckpt)
    (want,) = model.generate(["what is in video 0?"], videos=[os.path.join(msvd["videos"], "vid0")],
                             max_new_tokens=NEW, reduction=reduction and json.loads(reduction))
    assert rows[0]["pred"] == want
