"""Fixture writers: small synthetic files in tmp_path, in the official formats."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Files:
    def __init__(self, root):
        self.root = root

    def path(self, name: str) -> str:
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def jsonl(self, name: str, records) -> str:
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as f:
            for r in records:
                f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        return path

    def json(self, name: str, obj) -> str:
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f)
        return path

    def text(self, name: str, text: str) -> str:
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


@pytest.fixture
def files(tmp_path):
    return Files(str(tmp_path))


def _llava_answer(qid, text, prompt="q"):
    """An answer line in the official LLaVA format (docs/EVAL.md §0)."""
    return {"question_id": qid, "prompt": prompt, "text": text, "answer_id": f"a{qid}",
            "model_id": "test", "metadata": {}}


def _run_eval(*args, extra_python_flags=()):
    """`python eval.py ...` from the repo root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *extra_python_flags, os.path.join(REPO, "eval.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture
def llava_answer():
    return _llava_answer


@pytest.fixture
def run_eval():
    return _run_eval
