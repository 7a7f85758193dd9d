"""Missing or wrong command-line arguments, for every command: one `error: ...` line, then
the usage, exit 2 (`duet_jax.cli.Parser`). The installed `duet-*` commands are checked in
tests/test_packaging.py; failures past the arguments keep their one-line errors
(tests/evaluation/test_cli.py, tests/training/test_cli.py, tests/checkpoints/)."""
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (module with main(argv), the program name its usage shows, bad argument lists)
COMMANDS = [
    ("eval", "eval.py", [[], ["run"], ["score", "--benchmark", "pope"], ["bogus"],
                         ["run", "--model", "m", "--benchmark", "pope", "--questions", "q",
                          "--images", "i", "--answers", "a", "--batch-size", "eight"],
                         ["score", "--benchmark", "pope", "--answers", "a", "--annotations", "c",
                          "--summary", "s", "--bogus"]]),
    ("train", "train.py", [[], ["--set", "optim.lr=1"], ["--config"], ["--config", "c", "-x"]]),
    ("convert.__main__", "python -m convert",
     [[], ["--src", "a"], ["--src", "a", "--dst", "b", "--dtype", "int4"],
      ["--src", "a", "--dst", "b", "--to", "gguf"],
      ["--src", "a", "--dst", "b", "--max-shard-size", "lots"]]),
    ("duet_jax.evaluation.cli", "duet-eval", [[], ["score"]]),
    ("duet_jax.training.cli", "duet-train", [[]]),
    ("duet_jax.checkpoints.cli", "duet-convert", [[]]),
    ("duet_jax.tiny", "duet-tiny", [[], ["--out", "x", "--seed", "one"]]),
    ("duet_jax.demo", "duet-demo", [["--bogus"]]),
]
CASES = [(module, prog, argv) for module, prog, bad in COMMANDS for argv in bad]


@pytest.mark.parametrize("module, prog, argv", CASES,
                         ids=[f"{p}:{' '.join(a) or 'none'}" for _, p, a in CASES])
def test_bad_arguments_are_one_line_and_the_usage(module, prog, argv, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: ") and "\n" not in lines[0]
    assert lines[1].startswith(f"usage: {prog}"), lines
    assert lines[-1].startswith(f"(see {prog}") and lines[-1].endswith(" --help)"), lines


@pytest.mark.parametrize("command", [["eval.py"], ["train.py", "--config"], ["-m", "convert"]])
def test_scripts_exit_2_with_the_usage(command):
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[0].startswith("error: ") and lines[1].startswith("usage:")


def test_failures_past_the_arguments_are_one_line_with_their_exit_code(capsys, monkeypatch):
    from duet_jax.checkpoints.reader import CheckpointError
    from duet_jax.cli import guarded
    from duet_jax.data.llava_json import RecordError
    from duet_jax.evaluation.io import ScoreError
    from duet_jax.training.config import ConfigError

    def raise_(error):
        raise error

    monkeypatch.delenv("DUET_DEBUG", raising=False)
    for error in (ConfigError("c"), RecordError("r"), CheckpointError("k"), ScoreError("s")):
        assert guarded(raise_, error) == 2
    assert guarded(raise_, PermissionError(13, "Permission denied", "/x/y")) == 1
    assert guarded(raise_, ZeroDivisionError("division by zero")) == 1
    assert guarded(raise_, KeyboardInterrupt(), undone="no output was written") == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines[4] == "error: Permission denied (/x/y)"
    assert lines[5].startswith("error: ZeroDivisionError: division by zero (set DUET_DEBUG=1")
    assert lines[6] == "error: interrupted; no output was written"
    assert len(lines) == 7 and all(line.startswith("error: ") for line in lines)
    monkeypatch.setenv("DUET_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        guarded(raise_, ZeroDivisionError("x"))
