"""`duet_jax.load_llava(path, mesh=...)` for every family: on 8 simulated CPU devices the
params land sharded by their model's PARAM_AXES table (fsdp splits the embedding
dimension, tensor the heads / MLP units / vocabulary) and the logits equal the
single-device logits within 1e-5 (fp32)."""
import subprocess
import sys

import numpy as np
import pytest

import duet_jax
from duet_jax.sharding import make_mesh

ATOL = 1e-5


def _split(leaf, dim: int, parts: int) -> None:
    """`leaf` really is cut into `parts` pieces along `dim` (each device holds one piece)."""
    assert leaf.addressable_shards[0].data.shape[dim] == leaf.shape[dim] // parts, (
        leaf.sharding.spec, leaf.shape)


def _check_attention(q_kernel, mesh_shape) -> None:
    """A q_proj kernel [(layers,) D, H*hd]: embed split on fsdp, heads on tensor."""
    _, fsdp, tensor = mesh_shape
    _split(q_kernel, q_kernel.ndim - 2, fsdp)
    _split(q_kernel, q_kernel.ndim - 1, tensor)


def _reference(path, logits_of):
    return np.asarray(logits_of(duet_jax.load_llava(path)))


# ---- LLaVA-1.5 -----------------------------------------------------------------
@pytest.fixture(scope="module")
def llava15(tmp_path_factory):
    from tests.helpers.tiny_hf import llava_batch, tiny_llava
    hf = tiny_llava()
    path = str(tmp_path_factory.mktemp("llava15"))
    hf.save_pretrained(path)
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(10, 4))
    logits_of = lambda m: m.logits(ids, pixels, mask)  # noqa: E731
    return path, logits_of, _reference(path, logits_of)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 1, 4)])
def test_llava15_sharded_logits_equal_single_device(llava15, shape):
    path, logits_of, ref = llava15
    model = duet_jax.load_llava(path, mesh=make_mesh(*shape))
    for part in ("vision", "text"):
        _check_attention(model.params[part]["layers"][0]["self_attn"]["q_proj"]["kernel"], shape)
    _split(model.params["text"]["embed_tokens"]["embedding"], 0, shape[2])
    _split(model.params["projector"]["linear_1"]["kernel"], 1, shape[2])
    np.testing.assert_allclose(np.asarray(logits_of(model)), ref, atol=ATOL, rtol=0)


# ---- LLaVA-NeXT and LLaVA-OneVision (AnyRes families) ---------------------------
def _anyres_model(family: str):
    """(HF model, batch builder) of an AnyRes family: NeXT (CLIP + Llama) or OneVision
    (SigLIP + Qwen2)."""
    if family == "LlavaNext":
        from tests.helpers.tiny_next import SIZES, next_batch, tiny_llava_next
        hf = tiny_llava_next()
        return hf, lambda: next_batch(hf, SIZES[:2], (6, 3))
    from duet_jax.models import onevision_layout
    from duet_jax.models.onevision_layout import OnevisionConfig
    from tests.helpers.tiny_onevision import (IMAGE_TOKEN, SIZES, block_batch, image_pixels,
                                              tiny_onevision)
    hf = tiny_onevision()

    def batch():
        cfg = OnevisionConfig.from_hf(hf.config.to_dict())
        pixels, sizes = image_pixels(hf, SIZES[:2])
        counts = [onevision_layout.num_image_tokens(cfg, s) for s in sizes]
        return (*block_batch(counts, (6, 3), IMAGE_TOKEN), pixels, sizes)
    return hf, batch


@pytest.fixture(scope="module", params=["LlavaNext", "LlavaOnevision"])
def llava_next(request, tmp_path_factory):
    hf, batch = _anyres_model(request.param)
    path = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(path)
    ids, mask, pixels, sizes = batch()
    logits_of = lambda m: m.logits(ids, pixels, mask, image_sizes=sizes)  # noqa: E731
    return path, logits_of, _reference(path, logits_of), request.param


@pytest.mark.parametrize("shape", [(2, 4, 1), (1, 2, 4)])
def test_llava_next_sharded_logits_equal_single_device(llava_next, shape):
    path, logits_of, ref, family = llava_next
    model = duet_jax.load_llava(path, mesh=make_mesh(*shape))
    assert type(model).__name__ == family
    _check_attention(model.params["text"]["layers"][0]["self_attn"]["q_proj"]["kernel"], shape)
    _check_attention(model.params["vision"]["layers"][0]["self_attn"]["q_proj"]["kernel"], shape)
    assert model.params["image_newline"].sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(logits_of(model)), ref, atol=ATOL, rtol=0)


# ---- Video-LLaVA ---------------------------------------------------------------
@pytest.fixture(scope="module")
def video_llava(tmp_path_factory):
    from tests.helpers.tiny_video import tiny_video_llava, video_batch
    hf = tiny_video_llava()
    path = str(tmp_path_factory.mktemp("video") / "hf")
    hf.save_pretrained(path)
    ids, mask, pixels = video_batch(hf.config, media="video", text_lengths=(6, 3))
    logits_of = lambda m: m.logits(ids, attention_mask=mask, pixel_values_videos=pixels)  # noqa: E731
    return path, logits_of, _reference(path, logits_of)


@pytest.mark.parametrize("shape,converted", [((1, 8, 1), False), ((2, 1, 4), False),
                                             ((1, 2, 4), True)])
def test_video_llava_sharded_logits_equal_single_device(video_llava, shape, converted, tmp_path):
    path, logits_of, ref = video_llava
    if converted:      # a `python -m convert` output restores straight onto the mesh too
        out = str(tmp_path / "conv")
        subprocess.run([sys.executable, "-m", "convert", "--src", path, "--dst", out],
                       check=True, capture_output=True)
        path = out
    model = duet_jax.load_llava(path, mesh=make_mesh(*shape))
    assert type(model).__name__ == "VideoLlava"
    for part in ("image_tower", "video_tower", "text"):
        _check_attention(model.params[part]["layers"][0]["self_attn"]["q_proj"]["kernel"], shape)
    np.testing.assert_allclose(np.asarray(logits_of(model)), ref, atol=ATOL, rtol=0)


# ---- Qwen2.5-VL ----------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from tests.helpers.tiny_qwen import qwen_inputs, tiny_qwen
    hf = tiny_qwen()
    path = str(tmp_path_factory.mktemp("qwen"))
    hf.save_pretrained(path)
    ids, pixels, grid = qwen_inputs()
    logits_of = lambda m: m.logits(ids, pixels, image_grid_thw=grid)  # noqa: E731
    return path, logits_of, _reference(path, logits_of)


@pytest.mark.parametrize("shape", [(2, 4, 1), (1, 2, 4)])
def test_qwen25vl_sharded_logits_equal_single_device(qwen, shape):
    path, logits_of, ref = qwen
    _, fsdp, tensor = shape
    model = duet_jax.load_llava(path, mesh=make_mesh(*shape))
    assert type(model).__name__ == "Qwen25VL"
    vision, text = model.params["vision"], model.params["text"]
    _check_attention(text["layers"]["self_attn"]["q_proj"]["kernel"], shape)   # stacked
    # the fused qkv [depth, D, 3D] splits its input on fsdp and is replicated on tensor
    # (a tensor split of the q|k|v axis would not give devices whole heads)
    qkv = vision["layers"]["attn"]["qkv"]["kernel"]
    assert qkv.sharding.spec[2] is None
    _split(qkv, 1, fsdp)
    assert qkv.addressable_shards[0].data.shape[2] == qkv.shape[2]
    _split(vision["layers"]["attn"]["proj"]["kernel"], 1, tensor)
    _split(vision["merger"]["mlp_0"]["kernel"], 1, tensor)
    _split(vision["merger"]["mlp_0"]["kernel"], 0, fsdp)
    np.testing.assert_allclose(np.asarray(logits_of(model)), ref, atol=ATOL, rtol=0)
