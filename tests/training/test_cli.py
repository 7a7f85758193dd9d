"""`python train.py` on bad input: one `error: ...` line naming the problem, exit code 2,
before anything is compiled."""
import json
import pytest

from tests.training.conftest import SMALL, TINY_JSON, TINY_YAML


def _main(capsys, assets_dir, tmp_path, *overrides):
    """train.py's exit code and last stderr line; "distributed.process_id=..." alone comes
    with num_processes=2 (and no initialize: validation runs first)."""
    from train import main

    args = ["--config", TINY_YAML]
    if any(o.startswith("distributed.process_id=") for o in overrides):
        overrides = (*overrides, "distributed.num_processes=2")
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


# --- every bad input ends in one line, exit 2, before anything is written -------------------
def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda t: f"data.train_json={_write(t, 'cut.json', open(TINY_JSON).read()[:300])}",
     "not valid JSON (Unterminated string"),
    (lambda t: f"data.train_json={_write(t, 'empty.json', '[]')}", "the data set is empty"),
    (lambda t: f"data.train_json={_write(t, 'object.json', '{}')}", "got a JSON dict"),
    (lambda t: f"data.train_json={_write(t, 'zero.json', '')}", "not valid JSON"),
    (lambda t: f"data.train_json={_write(t, 'x.jsonl', '{}' + chr(10) + '{oops')}",
     "line 2 is not JSON"),
    (lambda t: f"data.train_json={t / 'missing.json'}", "data.train_json: no such file"),
    (lambda t: f"data.image_folder={t / 'missing'}", "data.image_folder: no such folder"),
    (lambda t: f"model.checkpoint={t / 'missing'}", "model.checkpoint: no such file or folder"),
    (lambda t: "data.max_length=0", "data.max_length=0 is out of range; it must be > 0"),
    (lambda t: "optim.lr=-1", "optim.lr=-1.0 is out of range"),
    (lambda t: "optim.lr=.nan", "optim.lr=nan is out of range"),
    (lambda t: "optim.b2=1.5", "optim.b2=1.5 is out of range; it must be >= 0 and < 1"),
    (lambda t: "optim.warmup_ratio=2", "must be in [0, 1)"),
    (lambda t: "global_batch_size=0", "positive multiple"),
    (lambda t: "micro_batch_size=0", "positive multiple"),
    (lambda t: "max_steps=0", "max_steps=0; use -1"),
    (lambda t: "mesh.data=0", "mesh.data=0; use a device count"),
    (lambda t: "data.num_threads=-1", "data.num_threads=-1 is out of range"),
    (lambda t: "data.length_buckets=[0]", "data.length_buckets[0]=0 is out of range"),
    (lambda t: "model.random.text_layers=0", "model.random.text_layers=0 is out of range"),
    (lambda t: "checkpoint.export_dtype=int8", "checkpoint.export_dtype:"),
    (lambda t: "seed=-1", "seed=-1 is out of range; it must be >= 0"),
    (lambda t: "data.template=bogus", "data.template: unknown conversation template 'bogus'"),
    (lambda t: "model.dtype=int8", "model.dtype 'int8' is not supported"),
    (lambda t: "distributed.process_id=2", "distributed.process_id=2 with num_processes=2"),
    (lambda t: "reduction.stage1.dominant=-3", "reduction:"),
    (lambda t: f"output_dir={_write(t, 'a_file', '')}", "is not a folder"),
    (lambda t: f"output_dir={_write(t, 'b_file', '')}/under", "is not a folder"),
], ids=["json-truncated", "json-empty-list", "json-object", "json-zero-bytes", "jsonl-bad-line",
        "json-missing", "image-folder-missing", "checkpoint-missing", "max-length-0", "lr-negative",
        "lr-nan", "beta-1.5", "warmup-2", "global-batch-0", "micro-batch-0", "max-steps-0",
        "mesh-0", "threads-negative", "bucket-0", "random-layers-0", "export-dtype-int8",
        "seed-negative", "template-unknown", "dtype-int8", "process-id-2-of-2",
        "reduction-negative",
        "output-dir-file", "output-dir-under-file"])
def test_bad_input_is_one_line_and_writes_nothing(capsys, assets_dir, tmp_path, make, message):
    code, line = _main(capsys, assets_dir, tmp_path, make(tmp_path))
    assert code == 2 and line.startswith("error:") and message in line, line
    assert not (tmp_path / "out").exists()


def test_empty_output_dir_writes_nothing_to_the_working_directory(capsys, assets_dir, tmp_path):
    code, line = _main(capsys, assets_dir, tmp_path, "output_dir=")
    assert code == 2 and line == "error: output_dir is empty; give the folder the run writes into"


def test_malformed_config_yaml(capsys, tmp_path):
    from train import main

    code = main(["--config", _write(tmp_path, "bad.yaml", "a: [1, 2\nb: {")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: config file ") and "is not valid YAML (line 2, column 2" in err[0]


def test_zero_byte_image_is_named(capsys, assets_dir, tmp_path):
    import shutil
    from tests.training.conftest import IMAGE_FOLDER

    shutil.copytree(IMAGE_FOLDER, tmp_path / "assets")
    (tmp_path / "assets" / "images" / "shape_01.png").write_bytes(b"")
    code, line = _main(capsys, assets_dir, tmp_path, f"data.image_folder={tmp_path / 'assets'}")
    assert code == 2 and line.startswith("error: record 2: image file is empty:")
    assert not (tmp_path / "out").exists()


def test_read_only_output_dir_exits_1(capsys, assets_dir, tmp_path, monkeypatch):
    """Tests run as root, whom chmod does not stop: the access check is what is simulated."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    code, line = _main(capsys, assets_dir, tmp_path)
    assert code == 1 and line.startswith(f"error: cannot write output_dir {tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


def test_full_disk_exits_1_in_one_line(capsys, assets_dir, tmp_path, monkeypatch):
    import errno
    import os
    from duet_jax.training import loop

    def full(cfg):
        path = os.path.join(cfg.output_dir, "config.yaml")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(loop, "_write_config", full)
    code, line = _main(capsys, assets_dir, tmp_path, "mesh.data=1", "micro_batch_size=4",
                       "global_batch_size=4", "max_steps=1")
    assert code == 1 and line == f"error: No space left on device ({tmp_path / 'out' / 'config.yaml'})"


@pytest.mark.parametrize("tokenizer", ["given", "built"])
def test_reduction_beyond_the_model_is_refused_before_the_tokenizer_is_built(
        capsys, assets_dir, tmp_path, tokenizer):
    """Stage-2 layer 9 of a 3-layer LM: refused from the config's sizes alone, so a random
    model's tokenizer is not yet written into output_dir/assets."""
    unset = ["model.tokenizer=null"] if tokenizer == "built" else []
    code, line = _main(capsys, assets_dir, tmp_path, "reduction.stage2.layers=[1, 9]", *unset)
    assert code == 2 and line.startswith("error: reduction:") and "9" in line, line
    assert not (tmp_path / "out").exists()
