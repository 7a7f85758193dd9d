"""Flax LLaVA-OneVision against HF PyTorch `LlavaOnevisionForConditionalGeneration` on tiny
random configs: packed image blocks (AnyRes grids, unpadding, the anyres_max_N bilinear
resize, newlines), video blocks (2x2 bilinear pooling, one newline), logits (fp32 1e-4)
and greedy decodes."""
import functools

import numpy as np
import pytest
import jax

from duet_jax.models import onevision_layout as layout
from duet_jax.models.llava_next import NextImages
from duet_jax.models.onevision import OnevisionModel
from tests.helpers.tiny_hf import (assert_valid_rows_close, hf_greedy_per_sample, hf_logits,
                                   jax_params)
from tests.helpers.tiny_onevision import (IMAGE_TOKEN, SIZES, VIDEO_TOKEN, block_batch,
                                          hf_block_features, image_pixels, random_videos,
                                          tiny_onevision)


@functools.lru_cache(maxsize=None)
def _setup(**kw):
    hf = tiny_onevision(**kw)
    return (hf, *jax_params(hf))


@pytest.mark.parametrize("aspect", ["anyres_max_2", "anyres_max_9"])
def test_packed_blocks_match_hf(aspect):
    hf, cfg, params = _setup(aspect=aspect)
    pixels, sizes = image_pixels(hf, SIZES)
    ref = hf_block_features(hf, pixels, sizes)
    counts = [layout.num_image_tokens(cfg, s) for s in sizes]
    assert counts == [r.shape[0] for r in ref]
    # 1x3 wide unpadded to 2x12 rows, 2x2 (resized to 5x5 under anyres_max_2), 2x1 tall, 1x2
    resized = (5, 5) if aspect == "anyres_max_2" else (8, 8)
    assert [layout.canvas_size(cfg, s)[1] for s in sizes] == [(2, 12), resized, (8, 2), (4, 8)]
    feats = OnevisionModel(cfg).image_features(params, NextImages(pixels, sizes)).tokens
    for b, r in enumerate(ref):
        np.testing.assert_allclose(np.asarray(feats[b, :counts[b]]), r.numpy(), atol=1e-5, rtol=0)
    videos = random_videos(2, 3)
    ref = np.stack([r.numpy() for r in hf_block_features(hf, videos)])
    assert ref.shape[1] == layout.num_video_tokens(cfg, 3) == 3 * 4 + 1
    feats = OnevisionModel(cfg).image_features(params, videos).tokens
    np.testing.assert_allclose(np.asarray(feats), ref, atol=1e-5, rtol=0)


def _image_batch(hf, cfg, sizes, text_lengths, seed):
    pixels, image_sizes = image_pixels(hf, sizes, seed)
    counts = [layout.num_image_tokens(cfg, s) for s in image_sizes]
    ids, mask = block_batch(counts, text_lengths, IMAGE_TOKEN, seed=seed)
    return ids, mask, pixels, image_sizes


@pytest.mark.parametrize("kw", [dict(), dict(kv_heads=4, feature_layer=-2, tie=True)],
                         ids=["gqa", "mha-layer-2-tied"])
def test_image_logits_match_torch(kw):
    hf, cfg, params = _setup(**kw)
    ids, mask, pixels, sizes = _image_batch(hf, cfg, SIZES[:3], (9, 14, 5), seed=1)
    ref = hf_logits(hf, ids, mask, pixel_values=pixels, image_sizes=sizes)
    model, images = OnevisionModel(cfg), NextImages(pixels, sizes)
    model.check_inputs(ids, images)
    logits, seq = jax.jit(model.apply)(params, ids, images, mask)
    assert_valid_rows_close(logits, ref, mask)


def test_video_logits_match_torch():
    hf, cfg, params = _setup()
    videos = random_videos(2, 3, seed=2)
    ids, mask = block_batch([layout.num_video_tokens(cfg, 3)] * 2, (6, 11), VIDEO_TOKEN, seed=2)
    ref = hf_logits(hf, ids, mask, pixel_values_videos=videos)
    model = OnevisionModel(cfg)
    model.check_inputs(ids, videos)
    logits, _ = jax.jit(model.apply)(params, ids, videos, mask)
    assert_valid_rows_close(logits, ref, mask)


def test_greedy_decode_matches_torch():
    """Our batched, right-padded decode (the one decoder) == HF generate per sample."""
    from duet_jax.generation.decode import generate_tokens
    hf, cfg, params = _setup(scale=0.3)
    ids, mask, pixels, sizes = _image_batch(hf, cfg, SIZES[1:], (9, 14, 5), seed=3)
    out = generate_tokens(OnevisionModel(cfg), params, ids, NextImages(pixels, sizes), mask,
                          max_new_tokens=6, eos_id=-1)
    tokens = np.asarray(out.tokens)
    ref = hf_greedy_per_sample(hf, ids, mask, 6, pixel_values=pixels, image_sizes=sizes)
    np.testing.assert_array_equal(tokens, ref)
    assert len({tuple(t) for t in tokens}) > 1


def test_bad_inputs_fail_with_one_line():
    hf, cfg, params = _setup()
    ids, mask, pixels, sizes = _image_batch(hf, cfg, SIZES[:2], (4, 4), seed=0)
    model = OnevisionModel(cfg)
    with pytest.raises(ValueError, match="needs 46"):
        model.check_inputs(ids, NextImages(pixels, [sizes[1], sizes[0]]))
    with pytest.raises(ValueError, match="video tokens"):
        model.check_inputs(ids, random_videos(2, 3))
