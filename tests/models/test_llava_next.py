"""Flax LLaVA-NeXT (AnyRes) against HF PyTorch `LlavaNextForConditionalGeneration` on tiny
random configs: packed image features, logits (fp32 1e-4) and greedy decodes, with images
of different grids / unpadding in one right-padded batch."""
import functools

import numpy as np
import pytest
import jax

from duet_jax.models import anyres
from duet_jax.models.llava_next import LlavaNextModel, NextImages
from tests.helpers.tiny_hf import (assert_valid_rows_close, hf_greedy_per_sample, hf_logits,
                                   jax_params)
from tests.helpers.tiny_next import (SIZES, hf_image_token_counts, next_batch, tiny_llava_next)


@functools.lru_cache(maxsize=None)
def _setup(**kw):
    hf = tiny_llava_next(**kw)
    return (hf, *jax_params(hf))


def test_counts_and_packed_features_match_hf():
    hf, cfg, params = _setup()
    _, _, pixels, sizes = next_batch(hf, SIZES, (4, 4, 4, 4))
    counts, packed = hf_image_token_counts(hf, pixels, sizes)
    # the sizes cover a 1x3 grid with unpadded rows, 2x2, 2x1 with unpadded cols, exact 1x2
    assert [anyres.grid_shape(cfg, s) for s in sizes] == [(1, 3), (2, 2), (2, 1), (1, 2)]
    assert [anyres.num_image_tokens(cfg, s) for s in sizes] == counts
    assert counts[0] == 16 + 2 * 13 and counts[2] == 16 + 8 * 3    # unpadding removed rows / cols
    feats = LlavaNextModel(cfg).image_features(params, NextImages(pixels, sizes)).tokens
    for b, n in enumerate(counts):
        np.testing.assert_allclose(np.asarray(feats[b, :n]), packed[b].numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(), dict(kv_heads=4)], ids=["gqa", "mha"])
def test_logits_match_torch(kw):
    hf, cfg, params = _setup(**kw)
    ids, mask, pixels, sizes = next_batch(hf, SIZES[:3], (9, 14, 5), seed=1)
    ref = hf_logits(hf, ids, mask, pixel_values=pixels, image_sizes=sizes)
    model, images = LlavaNextModel(cfg), NextImages(pixels, sizes)
    model.check_inputs(ids, images)
    logits, seq = jax.jit(model.apply)(params, ids, images, mask)
    assert_valid_rows_close(logits, ref, mask)
    np.testing.assert_array_equal(np.asarray(seq.valid), mask.astype(bool))


def test_greedy_decode_matches_torch():
    """Our batched, right-padded decode == HF generate run on each sample alone."""
    from duet_jax.generation.decode import generate_tokens
    hf, cfg, params = _setup(scale=0.3)
    ids, mask, pixels, sizes = next_batch(hf, SIZES[:3], (9, 14, 5), seed=2)
    out = generate_tokens(LlavaNextModel(cfg), params, ids, NextImages(pixels, sizes), mask,
                          max_new_tokens=6, eos_id=-1)
    tokens = np.asarray(out.tokens)
    ref = hf_greedy_per_sample(hf, ids, mask, 6, pixel_values=pixels, image_sizes=sizes)
    np.testing.assert_array_equal(tokens, ref)
    assert len({tuple(t) for t in tokens}) > 1          # the samples do differ


def test_bad_inputs_fail_with_one_line():
    hf, cfg, params = _setup()
    ids, mask, pixels, sizes = next_batch(hf, SIZES[:2], (4, 4))
    model = LlavaNextModel(cfg)
    with pytest.raises(ValueError, match="needs 88"):
        model.check_inputs(ids, NextImages(pixels, [sizes[1], sizes[0]]))
    with pytest.raises(ValueError, match="image_sizes"):
        model.check_inputs(ids, pixels)
    with pytest.raises(ValueError, match="crops but pixel_values has 2"):
        model.check_inputs(ids, NextImages(pixels[:, :2], sizes))
