"""Qwen2.5-VL conversion: HF -> ours -> HF is bit-exact, and HF loads the export."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

from duet_jax.checkpoints.qwen25vl import export_qwen, load_qwen_params
from duet_jax.checkpoints.reader import CheckpointError
from tests.helpers.tiny_qwen import tiny_qwen


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_is_bit_exact(tmp_path, tie):
    hf = tiny_qwen(tie=tie)
    hf.save_pretrained(tmp_path / "hf")
    cfg, params = load_qwen_params(str(tmp_path / "hf"))
    assert params["text"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (2, 64, 64)
    assert ("lm_head" in params["text"]) == (not tie)
    export_qwen(cfg, params, str(tmp_path / "out"))
    a = load_file(str(tmp_path / "hf" / "model.safetensors"))
    b = load_file(str(tmp_path / "out" / "model.safetensors"))
    if tie:
        a.pop("lm_head.weight", None)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    # transformers reads the export back into the same model
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
    ref = hf.state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_module_names_layout_is_read(tmp_path):
    """transformers-5 module names (model.visual.*, model.language_model.*) read the same."""
    from safetensors.numpy import save_file
    hf = tiny_qwen()
    hf.save_pretrained(tmp_path / "hub")
    _, want = load_qwen_params(str(tmp_path / "hub"))
    (tmp_path / "mod").mkdir()
    save_file({k: v.numpy() for k, v in hf.state_dict().items()}, str(tmp_path / "mod" / "model.safetensors"))
    (tmp_path / "mod" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    _, got = load_qwen_params(str(tmp_path / "mod"))
    import jax
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        assert np.array_equal(a, b)


def test_missing_weight_is_a_clear_error(tmp_path):
    from safetensors.numpy import save_file
    hf = tiny_qwen()
    hf.save_pretrained(tmp_path)
    w = load_file(str(tmp_path / "model.safetensors"))
    w.pop("model.norm.weight")
    save_file(w, str(tmp_path / "model.safetensors"))
    # the one message every family gives (plan.check_complete), naming the hub key
    with pytest.raises(CheckpointError, match=r"is missing 1 weights .*: model\.norm\.weight;"):
        load_qwen_params(str(tmp_path))
