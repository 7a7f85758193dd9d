"""eval.py run with a CDPruner preset (docs/BASELINES.md §9): refused in one line naming
--clip-text-tower without a tower, run with one; answers equal the handle's."""
import importlib
import json
import os

import duet_jax
from tests.helpers.tiny_checkpoint import LLAVA_SHAPED, cached_tiny_checkpoint, write_pope_fixture
from tests.helpers.tiny_clip import build_tiny_clip


def test_cdpruner_run_needs_and_uses_the_clip_text_tower(tmp_path, capsys):
    ckpt = cached_tiny_checkpoint(**LLAVA_SHAPED)
    pope = write_pope_fixture(str(tmp_path / "pope"))
    clip = build_tiny_clip(str(tmp_path / "clip"), vision_hidden=32)
    answers = str(tmp_path / "cdp.jsonl")
    args = ["run", "--model", ckpt, "--benchmark", "pope", "--questions", pope["questions"],
            "--images", pope["images"], "--answers", answers, "--batch-size", "2",
            "--max-new-tokens", "3", "--reduction", "llava15-cdpruner-64"]
    main = importlib.import_module("eval").main
    capsys.readouterr()         # the builders' progress bars
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--clip-text-tower DIR" in err
    assert not os.path.exists(answers) and not os.path.exists(answers + ".run.json")
    assert main(args + ["--clip-text-tower", clip]) == 0
    lines = [json.loads(line) for line in open(answers)]
    settings = json.load(open(answers + ".run.json"))
    assert settings["clip_text_tower"] == os.path.abspath(clip)
    questions = [json.loads(q) for q in open(pope["questions"])]
    assert len(lines) == len(questions) == 4
    model = duet_jax.load_llava(ckpt, clip_text_tower=clip)
    from duet_jax.evaluation.questions import load_questions
    q = load_questions("pope", pope["questions"])[0]
    (want,) = model.generate([q.text], [os.path.join(pope["images"], q.image)],
                             reduction="llava15-cdpruner-64", max_new_tokens=3)
    assert lines[0]["question_id"] == questions[0]["question_id"] and lines[0]["text"] == want
