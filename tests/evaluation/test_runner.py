"""`eval.py run` on a tiny LLaVA-shaped checkpoint: official answer files, batching that
changes no answer, a real preset, resuming, and one-line errors for bad input."""
import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from duet_jax.evaluation import runner
from duet_jax.evaluation.questions import Question
from tests.helpers.tiny_checkpoint import LLAVA_SHAPED, cached_tiny_checkpoint, write_pope_fixture

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEW = 6     # max new tokens: enough to see multi-token answers, cheap on CPU


def _eval(*argv) -> int:
    return importlib.import_module("eval").main([str(a) for a in argv])


@pytest.fixture(scope="module")
def ckpt():
    return cached_tiny_checkpoint(**LLAVA_SHAPED)


@pytest.fixture(scope="module")
def pope(tmp_path_factory):
    return write_pope_fixture(str(tmp_path_factory.mktemp("pope")))


def _run_args(ckpt, pope, answers, *extra):
    return ("run", "--model", ckpt, "--benchmark", "pope", "--questions", pope["questions"],
            "--images", pope["images"], "--answers", answers, "--batch-size", 2,
            "--max-new-tokens", NEW, *extra)


@pytest.fixture(scope="module")
def reference(ckpt, pope, tmp_path_factory):
    """An uninterrupted unreduced run: the answer file's bytes."""
    path = str(tmp_path_factory.mktemp("ref") / "answers.jsonl")
    assert _eval(*_run_args(ckpt, pope, path)) == 0
    with open(path, "rb") as f:
        return path, f.read()


def _lines(data: bytes) -> list:
    return [json.loads(line) for line in data.decode().splitlines()]


def test_answer_file_is_official_and_matches_unbatched_generate(ckpt, pope, reference):
    import duet_jax
    from duet_jax.evaluation.questions import load_questions
    _, data = reference
    lines = _lines(data)
    questions = [json.loads(q) for q in open(pope["questions"])]
    assert [a["question_id"] for a in lines] == [q["question_id"] for q in questions]
    for a, q in zip(lines, questions):
        assert set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert a["prompt"] == q["text"] and a["metadata"] == {} and a["model_id"] == "tiny-llava"
    assert len({a["answer_id"] for a in lines}) == len(lines)
    # Batch 2 + length bucketing vs one prompt at a time with no padding at all.
    model = duet_jax.load_llava(ckpt)
    for a, q in zip(lines, load_questions("pope", pope["questions"])):
        image = os.path.join(pope["images"], q.image)
        (alone,) = model.generate([q.text], [image], max_new_tokens=NEW)
        assert a["text"] == alone


def test_question_text_wraps_to_the_official_prompt(pope, tmp_path):
    from duet_jax.data.conversation import build_eval_prompt
    from duet_jax.evaluation.questions import build_prompt, load_questions
    sqa = tmp_path / "llava_test_CQM-A.json"
    sqa.write_text(json.dumps([
        {"id": "4", "image": "4/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: x\nWhich?\nA. a\nB. b"},
            {"from": "gpt", "value": "A"}]},
        {"id": "7", "conversations": [{"from": "human", "value": "Which?\nA. a\nB. b"},
                                      {"from": "gpt", "value": "B"}]}]))
    questions = load_questions("pope", pope["questions"]) + load_questions("sqa", str(sqa))
    for q in questions:
        # what encode_batch hands the model, wrapped as Llava.encode wraps it
        wrapped = build_eval_prompt(q.text, has_image=q.image is not None)
        assert wrapped == build_prompt(q)


def test_score_end_to_end(reference, pope, tmp_path):
    path, data = reference
    summary = tmp_path / "summary.json"
    assert _eval("score", "--benchmark", "pope", "--answers", path, "--annotations",
                 pope["annotations"], "--questions", pope["questions"], "--summary", summary) == 0
    block = json.loads(summary.read_text())["pope"]
    # Independent POPE arithmetic (docs/EVAL.md §1) from the answer texts and the labels.
    labels = {}
    for split in ("adversarial", "random"):
        for line in open(os.path.join(pope["annotations"], f"coco_pope_{split}.json")):
            labels.setdefault(split, []).append(json.loads(line)["label"])
    answers = {a["question_id"]: a["text"] for a in _lines(data)}
    f1s = []
    for split, split_labels in labels.items():
        ids = [json.loads(q)["question_id"] for q in open(pope["questions"])
               if json.loads(q)["category"] == split]
        words = [set(answers[i].split(".")[0].replace(",", "").split(" ")) for i in ids]
        preds = ["no" if {"No", "not", "no"} & w else "yes" for w in words]
        tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, split_labels))
        fp = sum(p == "yes" and l == "no" for p, l in zip(preds, split_labels))
        fn = sum(p == "no" and l == "yes" for p, l in zip(preds, split_labels))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
        assert block["per_split"][split]["n"] == len(ids)
    assert block["f1_mean"] == pytest.approx(100 * sum(f1s) / len(f1s))


def test_preset_run_writes_settings_and_kept_pictures(ckpt, pope, tmp_path, reference):
    path = str(tmp_path / "duet64.jsonl")
    assert _eval(*_run_args(ckpt, pope, path, "--reduction", "llava15-duet-64",
                            "--save-kept", 1)) == 0
    lines = _lines(open(path, "rb").read())
    assert [a["question_id"] for a in lines] == [a["question_id"] for a in _lines(reference[1])]
    settings = json.load(open(path + ".run.json"))
    assert settings["reduction"]["name"] == "llava15-duet-64" and settings["max_new_tokens"] == NEW
    pictures = os.listdir(str(tmp_path / "duet64_kept"))
    assert pictures == ["00000_1.png"]


def test_resume_after_limit_equals_uninterrupted(ckpt, pope, reference, tmp_path):
    path = str(tmp_path / "answers.jsonl")
    assert _eval(*_run_args(ckpt, pope, path, "--limit", 2)) == 0
    assert len(open(path).read().splitlines()) == 2
    assert _eval(*_run_args(ckpt, pope, path)) == 0
    assert open(path, "rb").read() == reference[1]


def test_resume_after_kill_mid_line_equals_uninterrupted(ckpt, pope, reference, tmp_path):
    path = str(tmp_path / "answers.jsonl")
    first, second = reference[1].splitlines(keepends=True)[:2]
    with open(path, "wb") as f:      # a kill while the second line was being written
        f.write(first + second[:len(second) // 2])
    assert _eval(*_run_args(ckpt, pope, path)) == 0
    assert open(path, "rb").read() == reference[1]


def test_complete_file_in_any_order_is_rewritten_in_question_order(ckpt, pope, reference,
                                                                    tmp_path):
    path = str(tmp_path / "answers.jsonl")
    lines = reference[1].splitlines(keepends=True)
    with open(path, "wb") as f:
        f.write(b"".join(lines[::-1]))
    # Nothing is pending, so the model is never loaded: a bogus --model path is fine.
    args = list(_run_args(ckpt, pope, path))
    args[args.index("--model") + 1] = str(tmp_path / "no-model-needed")
    assert _eval(*args) == 0
    assert open(path, "rb").read() == reference[1]


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_bad_question_line_names_file_and_line(ckpt, pope, tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    good = open(pope["questions"]).read().splitlines()
    bad.write_text(good[0] + "\n{\"question_id\": 2, \"image\"\n" + good[2] + "\n")
    args = list(_run_args(ckpt, pope, str(tmp_path / "a.jsonl")))
    args[args.index("--questions") + 1] = str(bad)
    assert _eval(*args) == 2
    assert "q.jsonl:2: malformed JSON line" in _error_line(capsys)
    assert not os.path.exists(tmp_path / "a.jsonl")


def test_missing_image_names_the_file(ckpt, pope, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(pope["images"], images)
    os.remove(images / "COCO_val2014_000000000002.png")
    args = list(_run_args(ckpt, pope, str(tmp_path / "a.jsonl")))
    args[args.index("--images") + 1] = str(images)
    assert _eval(*args) == 2
    line = _error_line(capsys)
    assert "image file not found" in line and "COCO_val2014_000000000002.png" in line


def test_answers_of_another_question_file_are_refused(ckpt, pope, reference, tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    other = _lines(reference[1])[0]
    other["question_id"] = 999
    path.write_text(json.dumps(other) + "\n")
    assert _eval(*_run_args(ckpt, pope, str(path))) == 2
    assert "a.jsonl:1: line answers no question of this question file (question_id 999)" \
        in _error_line(capsys)


def test_resume_with_other_settings_is_refused(ckpt, pope, reference, tmp_path, capsys):
    path = str(tmp_path / "a.jsonl")
    with open(path, "wb") as f:
        f.write(reference[1].splitlines(keepends=True)[0])
    shutil.copy(reference[0] + ".run.json", path + ".run.json")
    assert _eval(*_run_args(ckpt, pope, path, "--reduction", "llava15-duet-64")) == 2
    assert "generated with reduction=null" in _error_line(capsys)


def test_malformed_answer_line_before_the_end_is_an_error(ckpt, pope, reference, tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    lines = reference[1].decode().splitlines(keepends=True)
    path.write_text(lines[0][:20] + "\n" + lines[1])
    assert _eval(*_run_args(ckpt, pope, str(path))) == 2
    assert "a.jsonl:1: malformed answer line" in _error_line(capsys)


@pytest.mark.parametrize("flag,value,message", [
    ("--benchmark", "vqav2", "unknown benchmark 'vqav2'"),
    ("--reduction", "llava15-duet-65", "unknown reduction preset 'llava15-duet-65'"),
    ("--batch-size", "0", "--batch-size must be >= 1"),
])
def test_bad_flags(ckpt, pope, tmp_path, capsys, flag, value, message):
    args = list(_run_args(ckpt, pope, str(tmp_path / "a.jsonl")))
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert _eval(*args) == 2
    assert message in _error_line(capsys)


def test_cli_error_is_one_line_and_exit_2(pope, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "run", "--model", "x",
                           "--benchmark", "nope", "--questions", pope["questions"], "--images",
                           pope["images"], "--answers", str(tmp_path / "a.jsonl")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown benchmark 'nope'; choose one of pope, textvqa, gqa, mme, sqa, seed, video"]


def _q(i, image):
    return Question("sqa", str(i), "t", "t", image, int(image is not None), None, "t", 8)


def test_batches_keep_order_and_never_mix_text_only_with_images():
    images = [True, False, True, True, False, False, True, True]
    questions = [_q(i, "x.png" if has else None) for i, has in enumerate(images)]
    pending = [0, 1, 2, 4, 5, 6, 7]
    batches = runner.plan_batches(questions, pending, 2)
    assert sorted(i for b in batches for i in b) == pending
    assert [b[0] for b in batches] == sorted(b[0] for b in batches)
    for b in batches:
        assert len({images[i] for i in b}) == 1 and b == sorted(b) and len(b) <= 2
    assert batches == [[0, 2], [1, 4], [5], [6, 7]]
    # a shape key (LLaVA-NeXT's canonical image size) splits image batches further
    shape = {0: "a", 2: "b", 3: "a", 6: "a", 7: "b"}
    batches = runner.plan_batches(questions, pending, 2, lambda q: shape[int(q.question_id)])
    assert batches == [[0, 6], [1, 4], [2, 7], [5]]


def test_video_frames_from_a_folder_and_clear_errors(tmp_path, capsys):
    from PIL import Image
    from duet_jax.evaluation import media
    root = tmp_path / "videos"
    (root / "v1").mkdir(parents=True)
    for k in range(20):      # frame k is painted with grey level k: the pick is readable
        Image.new("RGB", (8, 8), (k, k, k)).save(root / "v1" / f"frame_{k}.png")
    q = Question("video", "q1", "what?", "what?", "v1", 8, None, "what?", 1024, "cook")
    frames = media.load_video_frames(str(root), q)
    expected = np.linspace(0, 19, 8, dtype=int)
    assert [f.getpixel((0, 0))[0] for f in frames] == list(expected)
    (root / "v2.mp4").write_bytes(b"\x00")
    q2 = Question("video", "q2", "who?", "who?", "v2", 8, None, "who?", 1024, "man")
    if media.video_decoder() is None:
        with pytest.raises(runner.ScoreError, match="needs a video decoder: pip install av"):
            media.check_media("video", str(root), [q2])
    qdir = tmp_path / "MSVD_Zero_Shot_QA"
    qdir.mkdir()
    (qdir / "test_q.json").write_text(json.dumps([{"video_name": "v1", "question": "what?",
                                                   "question_id": "q1"}]))
    (qdir / "test_a.json").write_text(json.dumps([{"question_id": "q1", "answer": "cook"}]))
    assert _eval("run", "--model", tmp_path / "none", "--benchmark", "video", "--questions",
                 qdir, "--images", root, "--answers", tmp_path / "v.jsonl") == 2
    # the frames are fine; the model is the problem (tests/evaluation/test_video_run.py runs one)
    assert "cannot load the model" in _error_line(capsys)


def test_resume_after_sigkill_equals_uninterrupted(ckpt, tmp_path):
    """A real `kill -9` of `eval.py run` mid-run (batch size 1, 24 questions, killed once
    the first answer is on disk), then a resume: byte-identical to an uninterrupted run."""
    import signal
    import time
    fixture = write_pope_fixture(str(tmp_path / "pope24"), num_questions=24)
    reference = str(tmp_path / "reference.jsonl")
    args = list(_run_args(ckpt, fixture, reference))
    args[args.index("--batch-size") + 1] = 1
    assert _eval(*args) == 0
    killed = str(tmp_path / "killed.jsonl")
    args[args.index("--answers") + 1] = killed
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "eval.py"), *map(str, args)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(killed) and open(killed, "rb").read().count(b"\n") >= 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    finally:
        if proc.poll() is None:
            proc.kill()
    done = open(killed, "rb").read().count(b"\n")
    assert 1 <= done < 24
    assert _eval(*args) == 0
    assert open(killed, "rb").read() == open(reference, "rb").read()
