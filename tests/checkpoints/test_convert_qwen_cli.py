"""Qwen2.5-VL through `python -m convert`: HF -> converted -> HF is bit-exact both ways, the
converted dir has every family's layout, and bad checkpoints fail with LLaVA's one-line messages
(exit code 2)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from convert.__main__ import main
from duet_jax.checkpoints import CheckpointError, load_params, plan_conversion
from duet_jax.checkpoints.orbax_io import MARKER, flatten_tree
from duet_jax.checkpoints.qwen25vl import load_qwen_params
from tests.checkpoints.conftest import tiny_model
from tests.checkpoints.test_convert import ROOT, assert_same_params, run_cli
from tests.helpers.tiny_qwen import save_tiny_processor, tiny_qwen

ASSETS = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "preprocessor_config.json", "generation_config.json"}


@pytest.fixture(scope="module")
def qwen_hf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qwen") / "hf")
    tiny_qwen().save_pretrained(path)
    save_tiny_processor(path)
    return path


def host(params):
    import jax
    return jax.tree.map(np.asarray, params)


def assert_same_safetensors(a_dir, b_dir):
    a, b = (load_file(os.path.join(d, "model.safetensors")) for d in (a_dir, b_dir))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def test_cli_round_trip_is_bit_exact(qwen_hf, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    out, back = str(tmp_path / "jax"), str(tmp_path / "back")
    r = run_cli("--src", qwen_hf, "--dst", out)
    assert r.returncode == 0, r.stderr
    assert {"config.json", MARKER, "params"} | ASSETS <= set(os.listdir(out))
    with open(os.path.join(out, MARKER)) as f:
        assert json.load(f)["format"] == "duet_jax.qwen2_5_vl"
    # loading the converted dir gives the params of the HF dir, through both loaders
    cfg, want = load_qwen_params(qwen_hf)
    got_cfg, got = load_qwen_params(out)
    assert got_cfg == cfg
    assert_same_params(host(got), want)
    any_cfg, any_params = load_params(out)
    assert any_cfg == cfg
    assert_same_params(host(any_params), want)
    import duet_jax     # the public loader takes the converted dir like the HF one
    a, b = duet_jax.load_llava(qwen_hf), duet_jax.load_llava(out)
    assert type(a) is type(b) and a.config == b.config
    assert_same_params(host(b.params), host(a.params))
    r = run_cli("--src", out, "--dst", back, "--to", "hf")
    assert r.returncode == 0, r.stderr
    assert ASSETS <= set(os.listdir(back))
    assert_same_safetensors(qwen_hf, back)
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(back, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_hf_to_hf_and_bf16_tied_round_trips(tmp_path, capsys):
    """--to hf straight from an HF dir; a bf16 model with tied embeddings keeps its bits."""
    import torch

    src, out, back, direct = (str(tmp_path / n) for n in ("src", "jax", "back", "direct"))
    tiny_qwen(tie=True, seed=1).to(torch.bfloat16).save_pretrained(src)
    assert main(["--src", src, "--dst", out]) == 0
    cfg, params = load_qwen_params(out)
    assert cfg.text.tie_word_embeddings and "lm_head" not in params["text"]
    assert {np.asarray(x).dtype.name for x in flatten_tree(params).values()} == {"bfloat16"}
    assert main(["--src", out, "--dst", back, "--to", "hf"]) == 0
    assert_same_safetensors(src, back)
    assert main(["--src", src, "--dst", direct, "--to", "hf"]) == 0
    assert_same_safetensors(src, direct)
    assert "exported" in capsys.readouterr().out


# ---- bad checkpoints: the same one-line messages as LLaVA's, exit code 2 ----

# fault -> (keys to drop, tensors to add or replace: name -> (source key or None, shape or None))
QWEN_FAULTS = {
    "unknown": ((), {"foo.bar": (None, (1,))}),
    "missing": (("model.norm.weight",), {}),
    "duplicate": ((), {"model.language_model.norm.weight": ("model.norm.weight", None)}),
    "shape": ((), {"model.layers.1.mlp.up_proj.weight": (None, (96, 63))}),
}
LLAVA_FAULTS = {
    "unknown": ((), {"foo.bar": (None, (1,))}),
    "missing": (("language_model.model.norm.weight",), {}),
    "duplicate": ((), {"model.language_model.norm.weight": ("language_model.model.norm.weight",
                                                             None)}),
    "shape": ((), {"language_model.model.layers.1.mlp.up_proj.weight": (None, (48, 31))}),
}


def _faulty(src, dst, fault):
    drop, add = fault
    tensors = load_file(os.path.join(src, "model.safetensors"))
    for k in drop:
        del tensors[k]
    for name, (like, shape) in add.items():
        tensors[name] = tensors[like].copy() if like else np.zeros(shape, np.float32)
    os.makedirs(dst)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), dst)
    return dst


def _template(line, directory, fault, family):
    """The message with the directory, key names, shapes and family name taken out."""
    msg = line.removeprefix("error: ").replace(directory, "DIR").replace(family, "FAMILY")
    keys = [k for k in fault[0]] + [k for k, (like, _) in fault[1].items()] + \
           [like for like, _ in fault[1].values() if like]
    for k in sorted(keys, key=len, reverse=True):
        msg = msg.replace(k, "KEY")
    return re.sub(r"\[[0-9, ]*\]", "SHAPE", msg)


@pytest.fixture(scope="module")
def qwen_failures(qwen_hf, tmp_path_factory):
    """Every Qwen fault through the real CLI at once (start-up dominates), keyed by fault."""
    root = str(tmp_path_factory.mktemp("qwen_bad"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    srcs = {name: _faulty(qwen_hf, os.path.join(root, name), f) for name, f in QWEN_FAULTS.items()}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "convert", "--src", src, "--dst", os.path.join(root, "out", name)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, src in srcs.items()}
    return root, srcs, {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}


@pytest.mark.parametrize("fault", sorted(QWEN_FAULTS))
def test_cli_rejects_bad_qwen_checkpoint_like_llava(qwen_failures, tmp_path, fault):
    root, srcs, results = qwen_failures
    rc, _, stderr = results[fault]
    lines = stderr.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    drop, add = QWEN_FAULTS[fault]
    assert (drop or tuple(add))[0] in lines[0]            # names the key
    assert not os.path.exists(os.path.join(root, "out", fault))
    # the CLI says what it did not do; before that, LLaVA's message for the same fault, with
    # the specifics taken out, is the same text
    undone = "; no output was written"
    assert lines[0].endswith(undone), lines[0]
    llava = str(tmp_path / "llava")
    tiny_model().save_pretrained(llava)
    bad = _faulty(llava, str(tmp_path / fault), LLAVA_FAULTS[fault])
    with pytest.raises(CheckpointError) as e:
        plan_conversion(bad)
    assert "\n" not in str(e.value)
    assert (_template(lines[0].removesuffix(undone), srcs[fault], QWEN_FAULTS[fault], "Qwen2.5-VL")
            == _template(str(e.value), bad, LLAVA_FAULTS[fault], "LLaVA"))
