"""The README's ```python and ```bash snippets run as written, in order, in one directory.

Every fenced python / bash block of README.md runs unless its first line is
`# not run by tests/test_readme.py: <reason>` (the reason is shown in the README
itself). The README's quick start tells how to run its snippets without 7B weights:
`python -m duet_jax.tiny --out llava-tiny --pope pope-tiny` (its first runnable
block) and then `llava-tiny` for `llava-1.5-7b-hf` and the `pope-tiny/` files for the
POPE ones; STAND_INS are exactly those substitutions, and nothing else is changed.
The directory looks like a clone's root (eval.py, train.py and configs/ are links
to the repo's), `python` is this interpreter and the repo is on PYTHONPATH.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "# not run by tests/test_readme.py:"
STAND_INS = (("llava-1.5-7b-hf", "llava-tiny"),
             ("llava_pope_test.jsonl", "pope-tiny/llava_pope_test.jsonl"),
             ("--images val2014", "--images pope-tiny/val2014"),
             ("--annotations coco", "--annotations pope-tiny/coco"))
LINKED = ("eval.py", "train.py", "configs")


def readme_blocks() -> list:
    """[(language, code, section)] of every fenced python / bash block, in order."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for m in re.finditer(r"^```(python|bash)\n(.*?)^```", text, re.S | re.M):
        heads = re.findall(r"^##+ (.+)$", text[:m.start()], re.M)
        blocks.append((m.group(1), m.group(2), heads[-1] if heads else ""))
    return blocks


def test_every_snippet_runs_or_says_why_not():
    blocks = readme_blocks()
    skipped = [code.splitlines()[0] for _, code, _ in blocks if code.startswith(MARK)]
    assert all(len(line) > len(MARK) + 10 for line in skipped), skipped   # a reason each
    quick = [b for b in blocks if b[2] == "Quick start" and not b[1].startswith(MARK)]
    assert len(quick) >= 4, "the quick start's snippets must run"
    assert quick[0][1].startswith("python -m duet_jax.tiny --out llava-tiny --pope pope-tiny")


def _substitute(code: str) -> str:
    for written, instead in STAND_INS:
        code = code.replace(written, instead)
    return code


def test_readme_snippets_run_as_written(tmp_path):
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # a user's one device
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=ROOT,
               JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    ran, timings = 0, []
    for i, (language, code, section) in enumerate(readme_blocks()):
        if code.startswith(MARK):
            continue
        if ran == 1:     # after the tiny checkpoint: the picture the snippets call cat.jpg
            shutil.copy(sorted((tmp_path / "pope-tiny" / "val2014").iterdir())[0],
                        tmp_path / "cat.jpg")
        script = tmp_path / f"snippet_{i}.{'py' if language == 'python' else 'sh'}"
        script.write_text(_substitute(code))
        cmd = ([sys.executable, str(script)] if language == "python"
               else ["bash", "-e", "-o", "pipefail", str(script)])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        timings.append(f"{section} #{i} ({language}): {time.perf_counter() - t0:.0f} s")
        assert proc.returncode == 0, (f"README snippet {i} ({section}) failed:\n"
                                      f"{_substitute(code)}\n{proc.stderr[-3000:]}")
        ran += 1
    print("\n".join(timings))
    assert (tmp_path / "llava-hf-again" / "model.safetensors").is_file()
    assert (tmp_path / "s.json").is_file() and (tmp_path / "pope.jsonl").is_file()
    assert (tmp_path / "runs" / "tiny" / "hf" / "config.json").is_file()
