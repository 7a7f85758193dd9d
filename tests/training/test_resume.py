"""Resuming `python train.py` over an existing output_dir:

* the newest checkpoint truncated (a real cut data file): one warning line naming it, the
  run resumes from the previous one, retrains the lost step and exits 0;
* a config whose run-changing keys differ from the saved one (lr, max_steps) is refused
  with the keys named and nothing written; `resume.allow_changes=true` continues.
"""
import os

import pytest

from tests.training.conftest import SMALL, TINY_YAML

RUN = ["mesh.data=1", "micro_batch_size=4", "global_batch_size=4", "max_steps=2",
       "checkpoint.save_every=1", "checkpoint.keep=3", "checkpoint.async_save=false"]


def _main(capsys, args):
    from train import main

    argv = ["--config", TINY_YAML]
    for o in args:
        argv += ["--set", o]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.fixture
def finished(capsys, assets_dir, tmp_path_factory):
    """A finished 2-step run (checkpoints 1 and 2) and its overrides."""
    out = tmp_path_factory.mktemp("resume") / "run"
    cache = tmp_path_factory.getbasetemp() / "resume_xla_cache"
    args = [*SMALL, f"model.tokenizer={assets_dir}", f"output_dir={out}",
            f"compilation_cache_dir={cache}", *RUN]
    code, stdout, err = _main(capsys, args)
    assert code == 0, err[-5:]
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2"]
    return out, args


def _truncate_largest_file(folder):
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    largest = max(files, key=os.path.getsize)
    size = os.path.getsize(largest)
    with open(largest, "r+b") as f:
        f.truncate(size // 2)
    return largest, size


def test_truncated_newest_checkpoint_falls_back_to_the_previous(capsys, finished):
    from duet_jax.training.metrics import read_metrics

    out, args = finished
    cut, size = _truncate_largest_file(out / "checkpoints" / "2" / "state")
    assert size > 10_000        # a data file, not metadata
    code, stdout, err = _main(capsys, args)
    assert code == 0, err[-5:]
    warnings = [line for line in err if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{out}/checkpoints/2 is unreadable" in warnings[0]
    assert "resuming from the previous one" in warnings[0]
    assert f"resumed from {out}/checkpoints/1" in stdout
    assert "done: 2 steps" in stdout
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2"]        # step 2 saved again
    assert os.path.isdir(out / "unreadable-checkpoints" / "2")          # kept for inspection
    assert [r["step"] for r in read_metrics(str(out / "metrics.jsonl"))] == [1, 2]


def test_no_readable_checkpoint_is_one_error_line(capsys, finished):
    out, args = finished
    for step in ("1", "2"):
        _truncate_largest_file(out / "checkpoints" / step / "state")
    code, _, err = _main(capsys, args)
    assert code == 2
    assert err[-1].startswith(f"error: no checkpoint in {out}/checkpoints is readable")
    assert len([line for line in err if line.startswith("warning:")]) == 2


def test_changed_run_keys_are_refused_unless_allowed(capsys, finished):
    out, args = finished
    config_before = (out / "config.yaml").read_text()
    code, _, err = _main(capsys, args + ["optim.lr=2e-3", "max_steps=3", "data.num_threads=1"])
    assert code == 2 and len(err) == 1
    line = err[0]
    assert line.startswith(f"error: cannot resume {out} (checkpoint 2) with a changed config:")
    assert "max_steps: 2 -> 3" in line and "optim.lr: 0.001 -> 0.002" in line
    assert "num_threads" not in line and "resume.allow_changes=true" in line
    assert (out / "config.yaml").read_text() == config_before      # nothing rewritten

    code, stdout, err = _main(capsys, args + ["optim.lr=2e-3", "max_steps=3",
                                              "resume.allow_changes=true"])
    assert code == 0, err[-5:]
    assert f"resumed from {out}/checkpoints/2" in stdout and "done: 3 steps" in stdout


def test_sigterm_saves_the_step_under_way_and_exits_143(assets_dir, tmp_path):
    """One process: SIGTERM sets a flag; the step under way finishes, is saved, exit 143
    (the 2-process case, through JAX's preemption service, is in test_multiprocess.py)."""
    import signal
    import subprocess
    import sys
    import time

    from duet_jax.training.metrics import read_metrics
    from tests.training.conftest import ROOT

    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--config", TINY_YAML]
    for o in [*SMALL, f"model.tokenizer={assets_dir}", f"output_dir={out}", *RUN,
              "max_steps=30", "checkpoint.save_every=100"]:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 300
        while not read_metrics(str(out / "metrics.jsonl")):
            assert proc.poll() is None and time.time() < deadline, "no step logged in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    saved = [int(s) for s in os.listdir(out / "checkpoints")]
    assert len(saved) == 1 and 1 <= saved[0] < 24      # 4 epochs of 6 steps: 24 < max_steps
    assert f"stopped by SIGTERM after step {saved[0]} of 24;" in err
    assert [r["step"] for r in read_metrics(str(out / "metrics.jsonl"))] == list(range(1, saved[0] + 1))
