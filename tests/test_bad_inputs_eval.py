"""`eval.py run / score / sweep` on bad inputs, class by class: exactly one stderr line
`error: ...` naming the file or flag, exit 2 (input) or 1 (machine: full disk, read-only),
no traceback, and nothing written that looks finished or blocks the corrected rerun (no
answers, no `<answers>.run.json`, no output folder)."""
from __future__ import annotations

import errno
import importlib
import json
import os
import shutil

import pytest

from duet_jax.evaluation import io as eval_io
from duet_jax.evaluation import questions as questions_module
from tests.helpers.tiny_checkpoint import cached_tiny_checkpoint, write_pope_fixture

NEW = 2


def _eval(*argv) -> int:
    return importlib.import_module("eval").main([str(a) for a in argv])


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def pope(tmp_path_factory):
    return write_pope_fixture(str(tmp_path_factory.mktemp("pope")), num_questions=2,
                              image_size=56)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny HF checkpoint and its converted duet_jax copy."""
    from duet_jax.checkpoints.convert import convert_to_orbax
    hf = cached_tiny_checkpoint()
    converted = str(tmp_path_factory.mktemp("conv") / "tiny")
    convert_to_orbax(hf, converted)
    return {"hf": hf, "converted": converted}


def _run(pope, answers, model="no-model-needed", *extra, questions=None, benchmark="pope",
         images=None):
    return ("run", "--model", model, "--benchmark", benchmark,
            "--questions", questions or pope["questions"], "--images", images or pope["images"],
            "--answers", answers, "--max-new-tokens", NEW, *extra)


def _nothing_written(folder) -> None:
    assert not os.path.exists(folder) or os.listdir(folder) == [], os.listdir(folder)


# ---- question files ---------------------------------------------------------------------
def _question_file(tmp_path, pope, kind: str) -> str:
    first = json.loads(open(pope["questions"]).readline())
    text = {"empty": "", "blank_lines": "\n\n", "list": "[]\n", "object": "{}\n",
            "truncated": open(pope["questions"]).read()[:50],
            "text_not_string": json.dumps(dict(first, text=5)) + "\n",
            "image_null": json.dumps(dict(first, image=None)) + "\n",
            "id_list": json.dumps(dict(first, question_id=[1])) + "\n"}[kind]
    path = tmp_path / f"{kind}.jsonl"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("kind,needle", [
    ("empty", "holds no questions"), ("blank_lines", "holds no questions"),
    ("list", ":1: expected a JSON object, got list"),
    ("object", ":1: missing field 'question_id'"),
    ("truncated", ":1: malformed JSON line"),
    ("text_not_string", ":1: field 'text' must be a string, got int"),
    ("image_null", ":1: field 'image' must be a string, got NoneType"),
    ("id_list", ":1: field 'question_id' must be a string or an integer, got list"),
])
def test_bad_question_file_exits_2_before_anything_is_written(pope, tmp_path, capsys, kind,
                                                               needle):
    questions = _question_file(tmp_path, pope, kind)
    out = tmp_path / "out"
    assert _eval(*_run(pope, out / "a.jsonl", questions=questions)) == 2
    line = _one_error(capsys)
    assert questions in line and needle in line, line
    _nothing_written(out)


@pytest.mark.parametrize("benchmark,content", [
    ("sqa", None), ("video", None), ("sqa", "[]"), ("sqa", '{"a": 1}'), ("video", "[]")])
def test_json_list_benchmarks(pope, tmp_path, capsys, benchmark, content):
    """sqa / video read a JSON list: a .jsonl file is named as the wrong format, an empty
    list is no questions (not a run over nothing that exits 0)."""
    if content is None:
        questions, needle = pope["questions"], f"--benchmark {benchmark} reads the JSON list"
    else:
        questions = str(tmp_path / "test_q.json")
        open(questions, "w").write(content)
        (tmp_path / "test_a.json").write_text("[]")
        needle = "holds no questions" if content == "[]" else "got a JSON object"
    assert _eval(*_run(pope, tmp_path / "out" / "a.jsonl", questions=questions,
                       benchmark=benchmark)) == 2
    line = _one_error(capsys)
    assert questions in line and needle in line, line
    _nothing_written(tmp_path / "out")


# ---- --reduction files -------------------------------------------------------------------
@pytest.mark.parametrize("name,content,needle", [
    ("bad.yaml", "name: [unclosed\n", "bad.yaml:2: malformed YAML"),
    ("empty.yaml", "", "empty.yaml: the file is empty"),
    ("bad.json", '{"stage1": \n', "bad.json:2: malformed JSON"),
    ("list.yaml", "- 1\n", "got list"),
    ("keys.yaml", "stage3: 1\n", "unknown reduction key 'stage3'"),
    ("missing.yaml", None, "missing.yaml: file not found"),
])
def test_bad_reduction_file(pope, tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert _eval(*_run(pope, tmp_path / "out" / "a.jsonl", "no-model", "--reduction", path)) == 2
    line = _one_error(capsys)
    assert line.startswith("error: --reduction") and needle in line, line
    _nothing_written(tmp_path / "out")


# ---- output paths ------------------------------------------------------------------------
def test_answers_path_that_cannot_be_a_file(pope, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for answers, needle in ((tmp_path, "is a folder; --answers must name a file"),
                            (blocker / "a.jsonl", f"lies under the file {blocker}"),
                            ("/dev/null", "is not a regular file")):
        assert _eval(*_run(pope, answers)) == 2
        assert needle in _one_error(capsys)
    assert blocker.read_text() == "x"


def test_read_only_answers_folder_exits_1(pope, tmp_path, capsys, monkeypatch):
    """Tests run as root on some machines, where chmod cannot refuse a write: os.access
    (what a read-only mount answers) is simulated."""
    monkeypatch.setattr(eval_io.os, "access", lambda path, mode: False)
    answers = tmp_path / "ro" / "a.jsonl"
    assert _eval(*_run(pope, answers)) == 1
    assert _one_error(capsys) == (f"error: cannot write --answers there (read-only file system "
                                  f"or no permission) ({answers})")
    _nothing_written(tmp_path / "ro")


class _FullDisk:
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))    # as a file object raises

    def flush(self):
        pass

    def close(self):
        pass


def test_full_disk_mid_run_exits_1_and_leaves_nothing_that_blocks(pope, models, tmp_path,
                                                                   capsys, monkeypatch):
    answers = str(tmp_path / "a.jsonl")
    real_init = questions_module.AnswerWriter.__init__

    def full(self, path, append=False):
        real_init(self, path, append)
        self._file.close()
        self._file = _FullDisk()

    monkeypatch.setattr(questions_module.AnswerWriter, "__init__", full)
    assert _eval(*_run(pope, answers, models["hf"])) == 1
    assert _one_error(capsys) == f"error: No space left on device ({answers})"
    assert os.listdir(tmp_path) == []          # no empty answers, no .run.json
    monkeypatch.undo()
    assert _eval(*_run(pope, answers, models["hf"])) == 0     # the rerun just works
    assert len(open(answers).readlines()) == 2


def test_atomic_write_on_a_full_disk_names_the_target_and_leaves_no_temp(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(eval_io.os, "fsync", full)
    target = tmp_path / "summary.json"
    with pytest.raises(OSError) as info:
        eval_io.atomic_write_text(str(target), "{}")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os.listdir(tmp_path) == []


# ---- the model ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_damaged_converted_model(pope, models, tmp_path, capsys, how):
    model = str(tmp_path / "model")
    shutil.copytree(models["converted"], model)
    data = os.path.join(model, "params", "ocdbt.process_0", "d")
    biggest = max((os.path.join(data, n) for n in os.listdir(data)), key=os.path.getsize)
    os.truncate(biggest, 100) if how == "truncated" else os.remove(biggest)
    out = tmp_path / "out"
    assert _eval(*_run(pope, out / "a.jsonl", model)) == 2
    line = _one_error(capsys)
    assert f"cannot read the orbax params ({model}/params" in line
    assert "truncated, corrupt or missing; convert the checkpoint again" in line
    _nothing_written(out)


def test_reduction_that_does_not_fit_the_model_writes_nothing(pope, models, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(*_run(pope, out / "a.jsonl", models["hf"], "--reduction",
                       "llava15-duet-64")) == 2
    assert "--reduction llava15-duet-64" in _one_error(capsys)
    _nothing_written(out)


def test_stale_settings_without_answers_do_not_block_the_rerun(pope, models, tmp_path, capsys):
    """A sidecar left beside an empty answer file (an older failed run) mixes nothing."""
    answers = tmp_path / "a.jsonl"
    answers.write_text("")
    (tmp_path / "a.jsonl.run.json").write_text(json.dumps({"benchmark": "pope", "dtype": "x",
                                                           "max_new_tokens": 99}))
    assert _eval(*_run(pope, answers, models["hf"])) == 0
    assert len(answers.read_text().splitlines()) == 2
    assert json.load(open(f"{answers}.run.json"))["max_new_tokens"] == NEW


def test_zero_byte_image_is_found_before_the_model_loads(pope, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(pope["images"], images)
    broken = sorted(os.listdir(images))[0]
    (images / broken).write_bytes(b"")
    assert _eval(*_run(pope, tmp_path / "out" / "a.jsonl", images=images)) == 2
    line = _one_error(capsys)
    assert f"{images}/{broken}: cannot read the image" in line
    _nothing_written(tmp_path / "out")


# ---- score and sweep ---------------------------------------------------------------------
def test_score_summary_path_checked_before_scoring(pope, tmp_path, capsys, monkeypatch):
    answers = tmp_path / "a.jsonl"
    answers.write_text("")
    base = ("score", "--benchmark", "pope", "--answers", answers, "--annotations",
            pope["annotations"], "--questions", pope["questions"], "--summary")
    assert _eval(*base, tmp_path) == 2
    assert "is a folder; --summary must name a file" in _one_error(capsys)
    monkeypatch.setattr(eval_io.os, "access", lambda path, mode: False)
    assert _eval(*base, tmp_path / "s.json") == 1
    assert "cannot write --summary there" in _one_error(capsys)
    assert os.listdir(tmp_path) == ["a.jsonl"]


def test_sweep_checks_everything_before_making_its_folders(pope, models, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base = ("sweep", "--benchmark", "pope", "--questions", pope["questions"], "--images",
            pope["images"], "--annotations", pope["annotations"], "--reductions", "none",
            "--max-new-tokens", NEW, "--out-dir")
    assert _eval(*base, blocker, "--model", models["hf"]) == 2
    assert f"{blocker}: is a file; --out-dir must name a folder" in _one_error(capsys)
    assert _eval(*base, tmp_path / "sweep", "--model", tmp_path / "no-model") == 2
    assert "cannot load the model" in _one_error(capsys)
    assert not os.path.exists(tmp_path / "sweep")


# ---- duet-demo (shares the same reporting) -------------------------------------------------
def test_demo_checks_presets_and_workdir_before_any_work(tmp_path, capsys):
    from duet_jax.demo import main

    assert main(["--workdir", str(tmp_path / "w"), "--presets", "llava15-duet-65"]) == 2
    assert "--presets llava15-duet-65: unknown reduction preset" in _one_error(capsys)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["--workdir", str(blocker), "--no-miniature"]) == 2
    assert f"--workdir {blocker} is a file" in _one_error(capsys)
    assert os.listdir(tmp_path) == ["a-file"]
