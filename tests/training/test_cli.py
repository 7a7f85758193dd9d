"""`python train.py` on bad input: one `error: ...` line naming the problem, exit code 2,
before anything is compiled."""
import json
import pytest

from tests.training.conftest import SMALL, TINY_JSON, TINY_YAML


def _main(capsys, assets_dir, tmp_path, *overrides):
    from train import main

    args = ["--config", TINY_YAML]
    for o in [*SMALL, f"model.tokenizer={assets_dir}", f"output_dir={tmp_path / 'out'}", *overrides]:
        args += ["--set", o]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _data(tmp_path, edit):
    with open(TINY_JSON) as f:
        records = json.load(f)
    edit(records)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return f"data.train_json={path}"


def test_malformed_record_names_its_index(capsys, assets_dir, tmp_path):
    def edit(records):
        records[5]["conversations"] = [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]
    code, line = _main(capsys, assets_dir, tmp_path, _data(tmp_path, edit))
    assert code == 2 and line.startswith("error: record 5:") and "'from'" in line


def test_missing_image_names_record_and_path(capsys, assets_dir, tmp_path):
    def edit(records):
        records[2]["image"] = "images/not_there.png"
    code, line = _main(capsys, assets_dir, tmp_path, _data(tmp_path, edit))
    assert code == 2 and line.startswith("error: record 2: image file not found")
    assert "not_there.png" in line


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr' (--set); did you mean optim.lr"),
    ("model.random.text_layer=2", "did you mean model.random.text_layers"),
    ("global_batch_size=7", "multiple of micro_batch_size"),
    ("reduction=llava15-duet-65", "unknown reduction preset"),
])
def test_bad_config_is_one_line(capsys, assets_dir, tmp_path, override, message):
    code, line = _main(capsys, assets_dir, tmp_path, override)
    assert code == 2 and line.startswith("error:") and message in line


def test_batch_and_mesh_mismatches(capsys, assets_dir, tmp_path):
    code, line = _main(capsys, assets_dir, tmp_path, "mesh.data=8", "micro_batch_size=4")
    assert code == 2 and "micro_batch_size=4 must be a multiple of the data-parallel ways (8" in line
    code, line = _main(capsys, assets_dir, tmp_path, "mesh.data=1", "micro_batch_size=8",
                       "global_batch_size=64", "num_epochs=1")
    assert code == 2 and "fewer than one global batch of 64" in line
    code, line = _main(capsys, assets_dir, tmp_path, "mesh.data=16")
    assert code == 2 and line.startswith("error: mesh:") and "needs 16 devices" in line


def test_config_paths_resolve_against_the_config_not_the_working_directory(assets_dir, tmp_path):
    """`train.py --config /abs/configs/tiny.yaml` from another directory reads the data its
    config names (duet_jax://...); a relative `--set output_dir` lands in the working directory."""
    import os
    import subprocess
    import sys

    from tests.training.conftest import ROOT

    own_paths = ("data.train_json=", "data.image_folder=")
    overrides = [o for o in SMALL if not o.startswith(own_paths)]
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", TINY_YAML]
    for o in [*overrides, f"model.tokenizer={assets_dir}", "max_steps=1", "mesh.data=1",
              "micro_batch_size=4", "global_batch_size=4", "output_dir=out"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 1 steps" in proc.stdout
    assert (tmp_path / "out" / "metrics.jsonl").is_file()
