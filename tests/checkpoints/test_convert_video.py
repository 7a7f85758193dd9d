"""Video-LLaVA checkpoints: HF -> ours -> HF is bit-exact for every tensor, every prefix
variant transformers accepts reads to the same params, the export loads in
`VideoLlavaForConditionalGeneration`, and bad input fails with one line."""
from __future__ import annotations

import copy
import json
import os
import re

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import convert
from duet_jax.checkpoints import CheckpointError, load_params
from duet_jax.checkpoints.orbax_io import flatten_tree
from duet_jax.models.video_llava import VideoLlavaConfig, VideoLlavaModel
from tests.checkpoints.test_convert import assert_same_params, t2n
from tests.helpers.tiny_video import tiny_video_llava, video_batch


def _state(model) -> dict:
    return {k: t2n(v) for k, v in model.state_dict().items()}


def _bitwise_equal_states(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(np.ascontiguousarray(a[k]).view(np.uint8),
                              np.ascontiguousarray(b[k]).view(np.uint8)), k


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory):
    model = tiny_video_llava(vision_layers=2, text_layers=2)
    path = str(tmp_path_factory.mktemp("video") / "hf")
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_round_trip_is_bit_exact_and_loads_in_transformers(video_ckpt, tmp_path, dtype):
    from transformers import VideoLlavaForConditionalGeneration
    model, src = video_ckpt
    if dtype == "bfloat16":
        model = copy.deepcopy(model).to(torch.bfloat16)   # .to is in place
        src = str(tmp_path / "bf16")
        model.save_pretrained(src)
    out, back = str(tmp_path / "jax"), str(tmp_path / "back")
    convert.convert_to_orbax(src, out, progress=False)
    assert json.load(open(os.path.join(out, "duet_jax_checkpoint.json")))["format"] == \
        "duet_jax.video_llava"
    cfg, params = load_params(out)
    assert isinstance(cfg, VideoLlavaConfig)
    want = ml_dtypes.bfloat16 if dtype else np.float32
    assert {np.dtype(x.dtype) for x in flatten_tree(params).values()} == {np.dtype(want)}
    convert.export_hf(out, back, progress=False)
    keys = set(load_file(os.path.join(back, "model.safetensors")))
    assert "image_tower.vision_model.encoder.layers.1.mlp.fc2.weight" in keys   # hub names
    assert "video_tower.vision_model.embeddings.class_embedding" in keys
    reloaded, info = VideoLlavaForConditionalGeneration.from_pretrained(
        back, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _bitwise_equal_states(_state(model), _state(reloaded))   # every tensor, bit for bit


def test_params_match_torch_weights_and_init_tree(video_ckpt):
    model, src = video_ckpt
    cfg, params = load_params(src)
    sd = _state(model)
    for tower in ("image_tower", "video_tower"):
        p = params[tower]
        np.testing.assert_array_equal(np.asarray(p["layers"]["self_attn"]["q_proj"]["kernel"][1]),
                                      sd[f"model.{tower}.encoder.layers.1.self_attn."
                                         "q_proj.weight"].T)
        np.testing.assert_array_equal(
            np.asarray(p["embeddings"]["patch_embedding"]["kernel"]),
            sd[f"model.{tower}.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0))
    assert not np.array_equal(np.asarray(params["image_tower"]["pre_layrnorm"]["scale"]),
                              np.asarray(params["video_tower"]["pre_layrnorm"]["scale"]))
    np.testing.assert_array_equal(np.asarray(params["text"]["lm_head"]["kernel"]),
                                  sd["lm_head.weight"].T)
    init = VideoLlavaModel(cfg).init(__import__("jax").random.key(0))
    shapes = lambda t: {k: v.shape for k, v in flatten_tree(t).items()}
    assert shapes(init) == shapes(params)


def _renamed(src, dst, rename):
    os.makedirs(dst)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    save_file({rename(k): v for k, v in tensors.items()}, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
        g.write(f.read())


def test_prefix_variants_read_to_identical_params(video_ckpt, tmp_path):
    """save_pretrained's names, the hub names (vision_model.) and transformers 5's in-memory
    names (model.*, lm_head) all give the same params."""
    _, src = video_ckpt
    _, base = load_params(src)
    hub = lambda k: re.sub(r"^(image_tower|video_tower)\.", r"\1.vision_model.", k)
    memory = lambda k: ("lm_head.weight" if k == "language_model.lm_head.weight"
                        else "model." + hub(k))
    for name, fn in (("hub", hub), ("memory", memory)):
        _renamed(src, str(tmp_path / name), fn)
        assert_same_params(load_params(str(tmp_path / name))[1], base)


def test_converted_dir_gives_the_same_logits(video_ckpt, tmp_path):
    import duet_jax
    model, src = video_ckpt
    out = str(tmp_path / "jax")
    convert.convert_to_orbax(src, out, progress=False)
    ids, mask, pixels = video_batch(model.config, "video")
    a = np.asarray(duet_jax.load_llava(src).logits(ids, pixels, mask))
    b = np.asarray(duet_jax.load_llava(out).logits(ids, pixel_values_videos=pixels,
                                                   attention_mask=mask))
    np.testing.assert_array_equal(a, b)


def test_bad_checkpoints_fail_with_one_line(video_ckpt, tmp_path):
    _, src = video_ckpt
    missing = str(tmp_path / "missing")
    _renamed(src, missing, lambda k: k)
    tensors = load_file(os.path.join(missing, "model.safetensors"))
    del tensors["video_tower.encoder.layers.1.mlp.fc1.bias"]
    save_file(tensors, os.path.join(missing, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1 weights.*video_tower\.vision_model\."
                                              r"encoder\.layers\.1\.mlp\.fc1\.bias"):
        load_params(missing)
    wrong = str(tmp_path / "wrong")
    _renamed(src, wrong, lambda k: k)
    cfg = json.load(open(os.path.join(wrong, "config.json")))
    cfg["video_seq_length"] = 7
    json.dump(cfg, open(os.path.join(wrong, "config.json"), "w"))
    with pytest.raises(CheckpointError, match="video_seq_length=7 is not a multiple"):
        load_params(wrong)
