"""The llavanext-duet-* presets on LLaVA-NeXT-7B's token geometry (336 px crops of 14 px
patches, 32 LM layers, a square image -> 2x2 grid, 5 crops) at tiny widths: the image
tokens the reduced forward actually carries per layer average to docs/ALGORITHM.md §4.2's
640.5 / 318.75 / 159.25, and a wide image (1x2 grid, 3 crops) gets (1+G) K = 3 K."""
import functools

import numpy as np
import pytest
import jax

from duet_jax.models.anyres import LlavaNextConfig
from duet_jax.models.config import TextConfig, VisionConfig
from duet_jax.models.llava_next import LlavaNextModel, NextImages
from duet_jax.reduction import average_visual_tokens, get_preset

SPEC = {"llavanext-duet-640": (640.5, 205), "llavanext-duet-320": (318.75, 102),
        "llavanext-duet-160": (159.25, 51)}      # (docs/ALGORITHM.md §4.2 avg, K per crop = d + c)
IMAGE = 500


@functools.lru_cache(maxsize=None)
def _model():
    cfg = LlavaNextConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, image_size=336, patch_size=14),
        text=TextConfig(vocab_size=512, hidden_size=32, intermediate_size=48,
                        num_hidden_layers=32, num_attention_heads=2,
                        max_position_embeddings=4096),
        image_token_index=IMAGE)
    model = LlavaNextModel(cfg)
    return model, model.init(jax.random.key(0))


@pytest.mark.parametrize("name", sorted(SPEC))
def test_measured_average_tokens_match_the_paper_budget(name):
    model, params = _model()
    red = get_preset(name)
    red.validate(576, 32, crops=5)
    sizes = [(600, 600), (300, 600)]                # 2x2 grid; 1x2 grid
    images = NextImages(np.random.default_rng(0).standard_normal((2, 5, 3, 336, 336),
                                                                 np.float32), sizes)
    n_ids = model.token_counts(images)
    assert n_ids[0] == 576 + 48 * 49                # HF: base + unpadded 48x48 canvas + newlines
    text = 7
    length = max(n_ids) + text
    ids = np.full((2, length), 5, np.int32)
    mask = np.zeros((2, length), np.int32)
    for b, n in enumerate(n_ids):
        ids[b, 2:2 + n] = IMAGE
        mask[b, :n + text] = 1
    fwd = jax.jit(model.forward, static_argnames=("reduction",))(params, ids, images, mask,
                                                                 reduction=red)
    avg, k = SPEC[name]
    n0 = np.array(model.token_counts(images, red))
    np.testing.assert_array_equal(n0, [5 * k, 3 * k])
    # image tokens each segment really carries = its valid rows - the text rows
    layers = np.array([seg.hi - seg.lo for seg in fwd.segments])
    carried = np.stack([np.asarray(seg.valid.sum(1)) - text for seg in fwd.segments], 1)
    measured = carried @ layers / 32
    assert measured[0] == avg == average_visual_tokens(name, 576, 32, crops=5)
    assert measured[1] == average_visual_tokens(name, 576, 32, crops=3)
    assert 1 - avg / 2880 > 0.77                    # >= 77.8 % fewer than NeXT's 2,880
