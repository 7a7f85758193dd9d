"""`python -m convert` on broken sources and unwritable destinations: exactly one stderr line
`error: ...` naming the file, exit 2 (the input) or 1 (the machine), no traceback, no orbax
noise, and nothing left at --dst or beside it (no `.partial-*` staging folder)."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys

import pytest

from duet_jax.checkpoints import cli, convert
from tests.checkpoints.conftest import tiny_model, write_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """An HF dir and its converted duet_jax dir."""
    root = tmp_path_factory.mktemp("bad-src")
    hf = str(root / "hf")
    tiny_model().save_pretrained(hf)
    write_tokenizer(hf)
    converted = str(root / "converted")
    convert.convert_to_orbax(hf, converted)
    return {"hf": hf, "converted": converted}


def _convert(capfd, *argv) -> tuple[int, str]:
    rc = cli.main([str(a) for a in argv])
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return rc, lines[0]


def _nothing_at(dst) -> None:
    parent = os.path.dirname(os.path.abspath(dst))
    assert not os.path.exists(dst)
    assert not [n for n in os.listdir(parent) if ".partial-" in n]


def _damaged(sources, tmp_path, how: str) -> str:
    d = str(tmp_path / f"converted-{how}")
    shutil.copytree(sources["converted"], d)
    data = os.path.join(d, "params", "ocdbt.process_0", "d")
    biggest = max((os.path.join(data, n) for n in os.listdir(data)), key=os.path.getsize)
    if how == "truncated":
        os.truncate(biggest, 100)
    else:
        os.remove(biggest)
    return d


@pytest.mark.parametrize("how", ["truncated", "missing"])
@pytest.mark.parametrize("to", ["hf", "orbax"])
def test_damaged_orbax_data_is_one_line_naming_the_checkpoint(sources, tmp_path, capfd, how, to):
    src = _damaged(sources, tmp_path, how)
    dst = tmp_path / "out"
    rc, line = _convert(capfd, "--src", src, "--dst", dst, "--to", to)
    assert rc == 2
    assert f"cannot read the orbax params ({src}/params" in line
    assert "truncated, corrupt or missing; convert the checkpoint again" in line
    assert "TensorStore" not in line
    _nothing_at(dst)


def _with_bin(sources, tmp_path, name: str, data: bytes) -> str:
    d = tmp_path / name
    d.mkdir()
    shutil.copy(os.path.join(sources["hf"], "config.json"), d)
    (d / "pytorch_model.bin").write_bytes(data)
    return str(d)


def _good_bin_bytes(tmp_path) -> bytes:
    import torch
    path = tmp_path / "good.bin"
    torch.save({"w": torch.ones(64)}, path)
    return path.read_bytes()


@pytest.mark.parametrize("case,needle", [
    ("empty", "is empty (0 bytes); re-download it"),
    ("lfs", "is a Git LFS pointer, not the weights; run `git lfs pull`"),
    ("truncated", "is not a readable PyTorch weight file (truncated or corrupt: RuntimeError"),
    ("random", "is not a readable PyTorch weight file (truncated or corrupt: "),
])
def test_unreadable_bin_says_what_is_wrong(sources, tmp_path, capfd, case, needle):
    data = {"empty": b"", "lfs": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n",
            "truncated": _good_bin_bytes(tmp_path)[:200],
            "random": bytes(range(256)) * 3}[case]
    src = _with_bin(sources, tmp_path, case, data)
    rc, line = _convert(capfd, "--src", src, "--dst", tmp_path / "out")
    assert rc == 2 and f"{src}/pytorch_model.bin" in line and needle in line, line
    _nothing_at(tmp_path / "out")


@pytest.mark.parametrize("which", ["hf", "converted"])
def test_config_json_not_json_names_the_file(sources, tmp_path, capfd, which):
    src = str(tmp_path / which)
    shutil.copytree(sources[which], src)
    with open(os.path.join(src, "config.json"), "w") as f:
        f.write('{"model_type": "llava",\n')
    rc, line = _convert(capfd, "--src", src, "--dst", tmp_path / "out", "--to", "hf")
    assert rc == 2 and f"{src}/config.json is not valid JSON" in line and "fix or replace" in line
    _nothing_at(tmp_path / "out")


def test_dst_under_a_file(sources, tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, line = _convert(capfd, "--src", sources["hf"], "--dst", blocker / "out")
    assert rc == 2 and f"--dst {blocker}/out lies under a file" in line
    assert blocker.read_text() == "x"


def test_full_disk_during_save_is_one_line_and_no_orbax_noise(sources, tmp_path, capfd,
                                                              monkeypatch):
    """TensorStore reports ENOSPC as ValueError('RESOURCE_EXHAUSTED ... os_error_code=28')
    while orbax's worker threads log it and print tracebacks: only our line remains."""
    import orbax.checkpoint as ocp

    def full_disk(self, directory, *args, **kwargs):
        logging.getLogger("absl").error("_SignalingThread.run() raised an exception: ...")
        print("Traceback (most recent call last):\nRuntimeError: Event loop is closed",
              file=sys.stderr)
        os.makedirs(directory)      # orbax leaves its tmp dir behind: staging must remove it
        raise ValueError("RESOURCE_EXHAUSTED: Error writing \"x/0\" in OCDBT database: Failed "
                         "to write 5394432 bytes to file 17: No space left on device "
                         "[os_error_code='28']")

    monkeypatch.setattr(ocp.Checkpointer, "save", full_disk)
    dst = tmp_path / "out"
    rc, line = _convert(capfd, "--src", sources["hf"], "--dst", dst)
    assert rc == 1
    assert line == f"error: No space left on device ({dst}); no output was written"
    _nothing_at(dst)


@pytest.mark.parametrize("to", ["hf", "orbax"])
def test_read_only_destination_names_dst(sources, tmp_path, capfd, monkeypatch, to):
    real = os.makedirs

    def read_only(path, *args, **kwargs):
        if ".partial-" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", read_only)
    dst = tmp_path / "out"
    src = sources["converted"] if to == "hf" else sources["hf"]
    rc, line = _convert(capfd, "--src", src, "--dst", dst, "--to", to)
    assert rc == 1 and line == f"error: Read-only file system ({dst}); no output was written"
    _nothing_at(dst)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs where the machine allows mounting one (root); skipped elsewhere."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.parametrize("to", ["orbax", "hf"])
def test_real_full_disk_in_a_subprocess(sources, small_tmpfs, to):
    """The real thing end to end: orbax / safetensors writing into a full file system."""
    src = sources["hf"] if to == "orbax" else sources["converted"]
    dst = small_tmpfs / "out"
    proc = subprocess.run([sys.executable, "-m", "convert", "--src", src, "--dst", str(dst),
                           "--to", to], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: No space left on device ({dst}); no output was written"]
    assert os.listdir(small_tmpfs) == []


@pytest.mark.parametrize("damage,needle", [
    ("no_params", "the orbax params folder {src}/params is missing"),
    ("bad_metadata", "cannot read the orbax params at {src}/params: its _METADATA is missing or "
                     "corrupt"),
])
def test_converted_dir_without_readable_params(sources, tmp_path, capfd, damage, needle):
    src = str(tmp_path / damage)
    shutil.copytree(sources["converted"], src)
    if damage == "no_params":
        shutil.rmtree(os.path.join(src, "params"))
    else:
        with open(os.path.join(src, "params", "_METADATA"), "w") as f:
            f.write("garbage")
    rc, line = _convert(capfd, "--src", src, "--dst", tmp_path / "out", "--to", "hf")
    assert rc == 2 and needle.format(src=src) in line and "convert the checkpoint again" in line
    _nothing_at(tmp_path / "out")


@pytest.mark.parametrize("case,needle", [
    ("truncated", "is truncated (5000 bytes, its header alone needs"),
    ("garbage", "is not a valid safetensors file (header length"),
])
def test_damaged_safetensors(sources, tmp_path, capfd, case, needle):
    src = str(tmp_path / case)
    shutil.copytree(sources["hf"], src)
    weights = os.path.join(src, "model.safetensors")
    if case == "truncated":
        os.truncate(weights, 5000)
    else:
        with open(weights, "wb") as f:
            f.write(b"\xff" * 1000)
    rc, line = _convert(capfd, "--src", src, "--dst", tmp_path / "out")
    assert rc == 2 and f"{weights} {needle}" in line and "re-download it" in line, line
    _nothing_at(tmp_path / "out")


def test_vision_tower_is_never_silently_ignored(sources, tmp_path, capfd):
    rc, line = _convert(capfd, "--src", sources["hf"], "--vision-tower", tmp_path / "nope",
                        "--dst", tmp_path / "out")
    assert rc == 2 and f"--vision-tower {tmp_path}/nope is not a directory" in line
    rc, line = _convert(capfd, "--src", sources["hf"], "--vision-tower", sources["hf"],
                        "--dst", tmp_path / "out")
    assert rc == 2 and "--vision-tower is for an original LLaVA --src" in line
    _nothing_at(tmp_path / "out")
