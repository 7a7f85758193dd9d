"""`eval.py run --benchmark video` end to end on a tiny Video-LLaVA checkpoint: frame folders
-> 8 frames -> answers in the official video format -> `score --benchmark video`."""
import importlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers.tiny_video import build_tiny_video_checkpoint

RED = json.dumps({"name": "tiny-duet", "stage1": {"dominant": 3, "contextual": 1, "width": 2},
                  "stage2": {"layers": [1, 3], "ratios": [0.5, 0.0]}})


def _eval(*argv) -> int:
    return importlib.import_module("eval").main([str(a) for a in argv])


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory):
    return build_tiny_video_checkpoint(str(tmp_path_factory.mktemp("vckpt") / "tiny-video-llava"),
                                       frames=4)


@pytest.fixture(scope="module")
def msvd(tmp_path_factory):
    root = tmp_path_factory.mktemp("msvd")
    videos, qdir = root / "videos", root / "MSVD_Zero_Shot_QA"
    qdir.mkdir()
    rng = np.random.default_rng(0)
    for v in range(3):                       # frame folders of 10-13 frames
        (videos / f"vid{v}").mkdir(parents=True)
        for k in range(10 + v):
            img = (rng.random((24 + v, 30, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(videos / f"vid{v}" / f"{k:04d}.jpg")
    qs = [{"video_name": f"vid{v}", "question": f"what is in video {v}?", "question_id": f"q{v}"}
          for v in range(3)]
    qs.append({"video_name": "missing", "question": "who?", "question_id": "q9"})   # skipped
    (qdir / "test_q.json").write_text(json.dumps(qs))
    (qdir / "test_a.json").write_text(json.dumps(
        [{"question_id": q["question_id"], "answer": "cat"} for q in qs]))
    return {"videos": str(videos), "questions": str(qdir)}


@pytest.mark.parametrize("reduction", [None, RED])
def test_eval_run_video_end_to_end(video_ckpt, msvd, tmp_path, reduction, capsys):
    import duet_jax
    answers = str(tmp_path / "answers.jsonl")
    extra = ("--reduction", reduction) if reduction else ()
    assert _eval("run", "--model", video_ckpt, "--benchmark", "video", "--questions",
                 msvd["questions"], "--images", msvd["videos"], "--answers", answers,
                 "--batch-size", 2, "--max-new-tokens", 4, *extra) == 0
    rows = [json.loads(line) for line in open(answers)]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert all(set(r) == {"id", "question", "answer", "pred"} and r["answer"] == "cat" for r in rows)
    # the run's answer = the public API's greedy answer for the same frames and question
    model = duet_jax.load_llava(video_ckpt)
    want = model.generate(["what is in video 0?"], videos=[os.path.join(msvd["videos"], "vid0")],
                          max_new_tokens=4, reduction=reduction and json.loads(reduction))
    assert rows[0]["pred"] == want[0]
    summary = str(tmp_path / "summary.json")
    assert _eval("score", "--benchmark", "video", "--answers", answers, "--annotations",
                 msvd["questions"], "--summary", summary) == 0
    assert "video" in json.dumps(json.load(open(summary))).lower()


def test_video_benchmark_with_an_image_llava_fails_clearly(msvd, tmp_path, capsys):
    from tests.helpers.tiny_checkpoint import cached_tiny_checkpoint
    assert _eval("run", "--model", cached_tiny_checkpoint(), "--benchmark", "video",
                 "--questions", msvd["questions"], "--images", msvd["videos"],
                 "--answers", tmp_path / "a.jsonl") != 0
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "needs a Video-LLaVA checkpoint" in err[0]
