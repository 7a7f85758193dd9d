"""`train.py` as 2 real processes on localhost (4 simulated CPU devices each, coordinator on
127.0.0.1), against the same run as 1 process with 8 devices (in this pytest process):

* both processes exit 0 within a time limit (killed on timeout, so CI never hangs), after
  the final save and the HF export;
* the same loss curve; one metrics file, one config, one HF export, no staging folder;
* the checkpoint they wrote is restored by a 1-process run onto 8 devices;
* SIGTERM to one process: both finish the step under way, save it and exit 143.

Tolerance: the global batch is the same samples in the same order (each process reads its
half of every micro-batch from the same seeded permutation), so the curves differ only by
the order of float32 sums across the two processes' devices (gradients all-reduced over
the process boundary): the 8-device meshes of test_runs.py agree with one device to 2e-5.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.training.conftest import ROOT, SMALL, TINY_YAML

STEPS = 3
LIMIT_S = 400       # per 2-process run, startup and compilation included (a loaded CI machine)
EIGHT = ["mesh.data=-1", "micro_batch_size=8", "global_batch_size=8", f"max_steps={STEPS}",
         "checkpoint.save_every=100"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(overrides, out, stop_after_step=None):
    """Start process 0 and 1; with `stop_after_step`, SIGTERM process 0 once that step is
    logged. -> [(returncode, log text)], both processes ended (killed on timeout)."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    procs, logs = [], []
    for i in range(2):
        cmd = [sys.executable, "train.py", "--config", TINY_YAML]
        for o in [*overrides, f"output_dir={out}", "distributed.initialize=true",
                  f"distributed.coordinator_address=127.0.0.1:{port}",
                  "distributed.num_processes=2", f"distributed.process_id={i}"]:
            cmd += ["--set", o]
        logs.append(open(out.parent / f"process{i}.log", "w+"))
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[-1],
                                      stderr=subprocess.STDOUT))
    deadline = time.time() + LIMIT_S
    try:
        if stop_after_step is not None:
            from duet_jax.training.metrics import read_metrics

            while len(read_metrics(str(out / "metrics.jsonl"))) < stop_after_step:
                assert all(p.poll() is None for p in procs), "a process ended before the stop"
                assert time.time() < deadline, "no step logged in time"
                time.sleep(0.05)
            procs[0].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except (subprocess.TimeoutExpired, AssertionError):
        for p in procs:
            p.kill()
            p.wait()
        raise
    finally:
        texts = []
        for f in logs:
            f.seek(0)
            texts.append(f.read())
            f.close()
    return [(p.returncode, t) for p, t in zip(procs, texts)]


@pytest.fixture(scope="module")
def overrides(assets_dir):
    return [*SMALL, f"model.tokenizer={assets_dir}", *EIGHT]


@pytest.fixture(scope="module")
def reference(overrides, tmp_path_factory):
    """Losses and final params of the 1-process, 8-device run."""
    from duet_jax.training.config import load_config
    from duet_jax.training.loop import setup

    cfg = load_config(TINY_YAML, overrides + [f"output_dir={tmp_path_factory.mktemp('ref')}"])
    run = setup(cfg)
    assert run.mesh.size == 8
    losses = [run.step()["loss"] for _ in range(STEPS)]
    params = jax.device_get(run.state["params"])
    run.checkpoints.close()
    return np.array(losses), params


def test_two_processes_finish_like_one(overrides, reference, tmp_path):
    from duet_jax.training.config import load_config
    from duet_jax.training.loop import setup
    from duet_jax.training.metrics import read_metrics

    out = tmp_path / "run"
    (out / ".hf.partial-12345").mkdir(parents=True)       # left by an export killed earlier
    t0 = time.time()
    ended = _launch(overrides + ["checkpoint.export_hf=true"], out)
    seconds = time.time() - t0
    for i, (code, log) in enumerate(ended):
        assert code == 0, f"process {i} exited {code}:\n{log[-3000:]}"
        assert f"done: {STEPS} steps" in log
    print(f"2-process run: {seconds:.0f} s")

    ref_losses, ref_params = reference
    records = read_metrics(str(out / "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in records], ref_losses, rtol=2e-5, atol=2e-5)
    assert sorted(os.listdir(out)) == ["checkpoints", "config.yaml", "final", "hf", "loss.png",
                                       "metrics.jsonl"]
    assert sorted(os.listdir(out / "checkpoints")) == [str(STEPS)]
    assert (out / "final" / "duet_jax_checkpoint.json").is_file()
    with open(out / "hf" / "config.json") as f:
        assert json.load(f)["architectures"] == ["LlavaForConditionalGeneration"]
    from safetensors.numpy import load_file
    hf = load_file(str(out / "hf" / "model.safetensors"))
    np.testing.assert_allclose(hf["multi_modal_projector.linear_1.weight"].T,
                               ref_params["projector"]["linear_1"]["kernel"], rtol=0, atol=1e-5)

    # A 1-process run over the same output_dir resumes from the 2-process checkpoint.
    run = setup(load_config(TINY_YAML, overrides + [f"output_dir={out}"]))
    assert run.start_step == STEPS and run.mesh.size == 8
    restored = jax.device_get(run.state["params"])
    run.checkpoints.close()
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_sigterm_stops_both_processes_after_a_saved_step(overrides, tmp_path):
    out = tmp_path / "run"
    ended = _launch(overrides + ["max_steps=40", "checkpoint.export_hf=false"], out,
                    stop_after_step=1)
    for i, (code, log) in enumerate(ended):
        assert code == 143, f"process {i} exited {code}:\n{log[-3000:]}"
        assert "stopped by SIGTERM after step" in log and "run the same command" in log
    saved = [int(s) for s in os.listdir(out / "checkpoints")]
    assert len(saved) == 1 and 1 <= saved[0] < 40
    assert not (out / "hf").exists() and not (out / "final").exists()
