"""Whole training runs with DUET on (tiny random LLaVA, bundled data, max_length 100).

* one device, two micro-batches accumulated per step: the reference curve; the CLIP
  tower stays bit-identical, every projector/LM leaf moves;
* 8 simulated CPU devices, data-parallel and fsdp+tensor meshes: the same curve;
* `python train.py` killed after step k and restarted with the same command: the same
  curve and final params, every step logged once, no half-written checkpoint;
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from duet_jax.training.config import load_config
from duet_jax.training.loop import setup
from tests.training.conftest import ROOT, SMALL, TINY_JSON, TINY_YAML

STEPS = 6           # 48 samples = exactly two epochs of the 24 records
MESH_STEPS = 4      # of the same 6-step schedule, on the 8-device meshes
ONE_DEVICE = ["mesh.data=1", "micro_batch_size=4", "global_batch_size=8", f"max_steps={STEPS}",
              "checkpoint.save_every=2"]


def _bits(tree):
    return jax.tree.map(lambda a: np.asarray(a).view(np.uint32).copy(), jax.device_get(tree))


def _changed(before, after):
    return jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)


def _curve(cfg, devices=None, steps=None):
    run = setup(cfg, devices=devices)
    before = _bits(run.state["params"])
    losses = [run.step()["loss"] for _ in range(steps or run.total_steps)]
    run.checkpoints.close()
    return run, np.array(losses), before, _bits(run.state["params"])


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def reference(assets_dir, tmp_path_factory, xla_cache):
    """The one-device curve. Its compiled step goes to a persistent cache that the
    `train.py` subprocesses of the kill test read (same program, same 8 host devices)."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    overrides = [*SMALL, f"model.tokenizer={assets_dir}", *ONE_DEVICE]
    cfg = load_config(TINY_YAML, overrides + [f"output_dir={tmp_path_factory.mktemp('ref')}"])
    cc.set_cache_dir(str(xla_cache))
    cc.reset_cache()
    try:
        return overrides, _curve(cfg, jax.devices()[:1])
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        cc.reset_cache()


def test_one_device_run_reduces_tokens_and_freezes_the_tower(reference):
    _, (run, losses, before, after) = reference
    assert run.reduction.stage1 is not None and run.reduction.stage2 is not None
    assert run.cfg.accumulation_steps == 2 and run.mesh.size == 1
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not any(jax.tree.leaves(_changed(before["vision"], after["vision"])))
    moved = _changed({k: before[k] for k in ("projector", "text")},
                     {k: after[k] for k in ("projector", "text")})
    stuck = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(moved) if not v]
    assert not stuck, f"trained params did not move: {stuck}"


# tensor 2, not 4: the tiny tokenizer's 602-entry vocabulary splits over 2 devices, and an
# axis that does not divide a parameter is an error (duet_jax.sharding), not a replication
@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 4, 2)], ids=["data8", "fsdp4-tensor2"])
def test_mesh_matches_one_device_curve(reference, mesh, tmp_path):
    overrides, (_, ref_losses, _, _) = reference
    data, fsdp, tensor = mesh
    cfg = load_config(TINY_YAML, overrides + [
        f"output_dir={tmp_path}", f"mesh.data={data}", f"mesh.fsdp={fsdp}",
        f"mesh.tensor={tensor}", "micro_batch_size=8"])
    run, losses, before, after = _curve(cfg, steps=MESH_STEPS)
    assert run.mesh.size == 8 and run.cfg.accumulation_steps == 1
    specs = [a.sharding.spec for a in jax.tree.leaves(run.state["params"])]
    assert any(any(axis is not None for axis in spec) for spec in specs)   # really sharded
    np.testing.assert_allclose(losses, ref_losses[:MESH_STEPS], rtol=2e-5, atol=2e-5)
    assert not any(jax.tree.leaves(_changed(before["vision"], after["vision"])))


def _truncated_per_epoch(assets_dir, max_length):
    """Records whose untruncated encoding is longer than max_length (independent of the loader)."""
    from transformers import AutoTokenizer
    from duet_jax.data import encode_training

    tok = AutoTokenizer.from_pretrained(assets_dir, local_files_only=True)
    with open(TINY_JSON) as f:
        records = json.load(f)
    count = 0
    for rec in records:
        turns = [(t["from"], t["value"]) for t in rec["conversations"]]
        ex = encode_training(turns, tok, template="vicuna_v1", has_image="image" in rec,
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             image_seq_length=16, max_length=10 ** 6)
        count += len(ex.input_ids) > max_length
    return count


def _train_cmd(overrides, out, cache):
    cmd = [sys.executable, "train.py", "--config", TINY_YAML]
    for o in [*overrides, f"output_dir={out}", f"compilation_cache_dir={cache}",
              "checkpoint.export_hf=true"]:
        cmd += ["--set", o]
    return cmd


def test_kill_and_resume_reproduces_the_curve(reference, assets_dir, tmp_path, xla_cache):
    from duet_jax.training.checkpoint import Checkpoints
    from duet_jax.training.metrics import read_metrics

    overrides, (run, ref_losses, _, ref_after) = reference
    out = tmp_path / "run"
    cmd = _train_cmd(overrides, out, xla_cache)
    metrics = out / "metrics.jsonl"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not (len(read_metrics(str(metrics))) >= 3 and (out / "checkpoints" / "2").is_dir()):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "the run did not reach step 3"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = len(read_metrics(str(metrics)))
    assert killed_at < STEPS, "killed too late to test anything"

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from " in done.stdout, done.stdout[-2000:]
    resumed_from = int(done.stdout.split("resumed from ")[1].split()[0].rsplit("/", 1)[1])
    assert 2 <= resumed_from < STEPS

    records = read_metrics(str(metrics))
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))    # each step once
    assert {"loss", "lr", "tokens_per_s"} <= set(records[0])
    np.testing.assert_array_equal([r["loss"] for r in records], ref_losses)

    # Only complete checkpoints, newest two kept; the last one holds the reference params.
    entries = sorted(os.listdir(out / "checkpoints"))
    assert entries == ["4", "6"], entries
    ckpts = Checkpoints(str(out / "checkpoints"), run.cfg.checkpoint)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), run.state)
    state, data_state = ckpts.restore(6, abstract, run.steps.shardings)
    ckpts.close()
    assert jax.tree.all(jax.tree.map(np.array_equal, _bits(state["params"]), ref_after))
    assert int(state["step"]) == STEPS

    # Over-long samples: truncated, counted across the resume, reported.
    expected = 2 * _truncated_per_epoch(assets_dir, 100)
    assert expected > 0 and records[-1]["samples_truncated"] == expected
    assert data_state["stats"]["truncated"] == expected
    assert f"{expected} of {2 * 24} samples were longer than max_length=100" in done.stdout

    assert (out / "loss.png").stat().st_size > 1000
    from transformers import LlavaForConditionalGeneration
    hf = LlavaForConditionalGeneration.from_pretrained(str(out / "hf"))
    np.testing.assert_array_equal(
        hf.model.multi_modal_projector.linear_1.weight.detach().numpy().T,
        np.asarray(state["params"]["projector"]["linear_1"]["kernel"]))


def test_bf16_compute_keeps_fp32_master_params(reference, tmp_path):
    """model.dtype=bfloat16 computes in bf16 while the params and AdamW stay float32;
    the curve follows the fp32 one within bf16 rounding."""
    overrides, (_, losses, _, _) = reference
    cfg = load_config(TINY_YAML, overrides + ["model.dtype=bfloat16", "model.param_dtype=float32",
                                              f"output_dir={tmp_path}"])
    run, bf16, _, _ = _curve(cfg, jax.devices()[:1], steps=3)
    dtypes = {str(a.dtype) for a in jax.tree.leaves(run.state["params"])}
    assert dtypes == {"float32"}
    assert run.model.dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(bf16, losses[:3], rtol=0.03)
