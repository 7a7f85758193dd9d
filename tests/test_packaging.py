"""`pip install .`: the wheel holds `duet_jax` with its package data and nothing else at the
top level, its commands run from any directory, and the runtime pins are requirements.txt's.

The wheel is built offline (`pip wheel --no-deps --no-build-isolation` from a copy of the
tree) and installed with `pip install --no-deps --target`, so the commands import the
installed copy, never the repo, and see the test venv's dependencies.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("duet-convert", "duet-eval", "duet-train", "duet-demo", "duet-tiny")


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _pins(path: str) -> list:
    with open(path) as f:
        return [line.split("#")[0].strip() for line in f
                if line.split("#")[0].strip() and not line.startswith("-r")]


def test_runtime_pins_are_requirements_txt_and_torch_is_an_extra():
    project = _pyproject()["project"]
    assert sorted(project["dependencies"]) == sorted(_pins(os.path.join(ROOT, "requirements.txt")))
    assert not any(d.startswith("torch") for d in project["dependencies"])
    dev = _pins(os.path.join(ROOT, "requirements-dev.txt"))
    assert sorted(project["optional-dependencies"]["test"]) == sorted(dev)
    assert set(project["scripts"]) == set(COMMANDS)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site dir with the installed package and bin/, wheel member names)."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "tests"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("duet_jax-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    return site, names


def _run(site, command, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    return subprocess.run([str(site / "bin" / command), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_package_and_its_data_only(installed):
    _, names = installed
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"duet_jax"}, tops          # no top-level convert / eval / train
    for rel in ("configs/miniature.yaml", "configs/miniature-finetune-duet.yaml",
                "data/assets/tiny_llava.json", "data/assets/demo.png",
                "data/assets/images/shape_00.png", "miniature/pretrained/model.safetensors",
                "miniature/pretrained/tokenizer.model", "miniature/pretrained/config.json"):
        assert f"duet_jax/{rel}" in names, rel
    # every data file of the source package is in the wheel
    for base, _, files in os.walk(os.path.join(ROOT, "duet_jax")):
        for name in files:
            if "__pycache__" not in base and not name.endswith(".pyc"):
                rel = os.path.relpath(os.path.join(base, name), ROOT).replace(os.sep, "/")
                assert rel in names, rel


def test_installed_commands_run_from_another_directory(installed, tmp_path):
    site, _ = installed
    for command in COMMANDS:
        assert (site / "bin" / command).is_file(), command
    # the installed package, not the repo, answers (the repo is not on the path here)
    proc = subprocess.run([sys.executable, "-c", "import duet_jax, duet_jax.resources as r; "
                           "print(duet_jax.__file__); print(r.bundled_config('miniature.yaml'))"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(site)),
                          capture_output=True, text=True, check=True)
    module, config = proc.stdout.split()
    assert module.startswith(str(site)) and os.path.isfile(config)
    # bad arguments: one line, the usage, exit 2
    for command, prog in (("duet-eval", "duet-eval"), ("duet-train", "duet-train"),
                          ("duet-convert", "duet-convert")):
        proc = _run(site, command, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and lines[0].startswith("error: "), proc.stderr
        assert lines[1].startswith(f"usage: {prog}"), proc.stderr
    # duet-eval score end to end (no JAX needed)
    (tmp_path / "coco").mkdir()
    questions, answers = [], []
    for split, offset in (("adversarial", 1), ("random", 10000001), ("popular", 20000001)):
        with open(tmp_path / "coco" / f"coco_pope_{split}.json", "w") as f:
            f.write(json.dumps({"question_id": 1, "label": "yes"}) + "\n")
        q = {"question_id": offset, "image": "x.jpg", "category": split,
             "text": "Is there a cat in the image?\nAnswer the question using a single word or "
                     "phrase."}
        questions.append(q)
        answers.append({"question_id": offset, "prompt": q["text"], "text": "Yes",
                        "answer_id": "a", "model_id": "m", "metadata": {}})
    for name, rows in (("q.jsonl", questions), ("a.jsonl", answers)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _run(site, "duet-eval", "score", "--benchmark", "pope", "--answers", "a.jsonl",
                "--annotations", "coco", "--questions", "q.jsonl", "--summary", "s.json",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "POPE F1 mean" in proc.stdout and (tmp_path / "s.json").is_file()
