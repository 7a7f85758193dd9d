"""Zoo methods on LLaVA-NeXT and LLaVA-OneVision (docs/BASELINES.md §9) == the slow
per-sample reference of each family's reduced tests: HF's own image block, DivPrune
(NumPy oracle) or random (the seeded draw of that row) over the whole block, then DART
by explicit gathers (layer K-1's post-RoPE keys and final norm from HF modules, the
NumPy oracle's keep, kept rows at their original positions). Two samples of one image
size whose blocks start at different rows with different text lengths: every row
equals its batch-1 reference. A batch of two sizes and a keep beyond the block are
refused in one line before anything compiles."""
import functools

import jax
import numpy as np
import pytest

from duet_jax.api.llava_next import LlavaNext
from duet_jax.api.llava_onevision import LlavaOnevision
from duet_jax.models import onevision_layout as layout
from duet_jax.models.llava_next import LlavaNextModel, NextImages
from duet_jax.models.onevision import OnevisionModel
from duet_jax.reduction import ReductionConfig, SelectConfig, Stage2Config, random_select
from tests.helpers.tiny_hf import jax_params
from tests.helpers.tiny_next import SIZES, hf_image_token_counts, next_batch, tiny_llava_next
from tests.helpers.tiny_onevision import (IMAGE_TOKEN, block_batch, hf_block_features,
                                          image_pixels, tiny_onevision)
from tests.models.test_next_reduced import _reference
from tests.reduction import zoo_oracle

DART = ReductionConfig("t-dart", None, Stage2Config((2,), (), positions="keep", method="dart",
                                                     keep=(20,)))

SELECT = {"divprune": ReductionConfig("t-divprune", select=SelectConfig("divprune", 30)),
          "random": ReductionConfig("t-random", select=SelectConfig("random", 30, seed=7))}


def _pad_cat(parts):
    length = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, length - p.shape[1]))) for p in parts])


@functools.lru_cache(maxsize=None)
def _next():
    hf = tiny_llava_next(text_layers=4, kv_heads=2, scale=0.2)
    cfg, params = jax_params(hf)
    a = next_batch(hf, SIZES[1:2], (14,), image_at=3, seed=3)
    b = next_batch(hf, SIZES[1:2], (9,), image_at=5, seed=4)
    ids, mask = _pad_cat([a[0], b[0]]), _pad_cat([a[1], b[1]])
    pixels, sizes = np.concatenate([a[2], b[2]]), np.concatenate([a[3], b[3]])
    blocks = [f.numpy() for f in hf_image_token_counts(hf, pixels, sizes)[1]]
    return hf, cfg, params, LlavaNextModel(cfg), ids, mask, NextImages(pixels, sizes), blocks


@functools.lru_cache(maxsize=None)
def _onevision():
    hf = tiny_onevision(text_layers=4, scale=0.2)
    cfg, params = jax_params(hf)
    a, b = (image_pixels(hf, SIZES[1:2], seed=s) for s in (3, 4))
    n = layout.num_image_tokens(cfg, tuple(a[1][0]))
    ia, ma = block_batch([n], (14,), IMAGE_TOKEN, image_at=3, seed=3)
    ib, mb = block_batch([n], (9,), IMAGE_TOKEN, image_at=5, seed=4)
    pixels, sizes = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
    blocks = [f.numpy() for f in hf_block_features(hf, pixels, sizes)]
    return (hf, cfg, params, OnevisionModel(cfg), _pad_cat([ia, ib]), _pad_cat([ma, mb]),
            NextImages(pixels, sizes), blocks)


FAMILIES = {"llava_next": _next, "onevision": _onevision}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dart_forward_equals_gathered_reference(family):
    hf, cfg, params, model, ids, mask, images, blocks = FAMILIES[family]()
    logits, seq = jax.jit(model.apply, static_argnames=("reduction",))(
        params, ids, images, mask, reduction=DART, prompt_lengths=mask.sum(1))
    logits, valid = np.asarray(logits), np.asarray(seq.valid)
    assert len({len(b) for b in blocks}) == 1 and len(blocks[0]) > DART.stage2.keep[0]
    for b in range(len(ids)):
        ref = _reference(hf, model, params, ids[b], blocks[b], int(mask[b].sum()),
                         int(mask[b].sum()), DART, np.zeros(ids.shape[1], bool))
        assert valid[b].sum() == len(ref) == mask[b].sum() - len(blocks[b]) + 20
        np.testing.assert_allclose(logits[b, :len(ref)], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", sorted(SELECT))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_block_selection_equals_gathered_reference(family, method):
    hf, cfg, params, model, ids, mask, images, blocks = FAMILIES[family]()
    red = SELECT[method]
    logits, seq = jax.jit(model.apply, static_argnames=("reduction",))(
        params, ids, images, mask, reduction=red, prompt_lengths=mask.sum(1))
    logits, valid = np.asarray(logits), np.asarray(seq.valid)
    k, n = red.select.budget, len(blocks[0])
    for b in range(len(ids)):
        if method == "divprune":
            keep = zoo_oracle.divprune(blocks[b][None], k)["keep"][0]
        else:
            keep = np.asarray(random_select(jax.random.key(7), len(ids), k, n)["keep"])[b]
        ref = _reference(hf, model, params, ids[b], blocks[b][keep], int(mask[b].sum()),
                         int(mask[b].sum()), red, np.zeros(ids.shape[1], bool))
        assert valid[b].sum() == len(ref) == mask[b].sum() - n + k
        np.testing.assert_allclose(logits[b, :len(ref)], ref, atol=1e-4, rtol=0)


def test_zoo_refuses_mixed_sizes_and_a_keep_beyond_the_block():
    hf, cfg, params, model, *_ = _next()
    ids, mask, pixels, sizes = next_batch(hf, SIZES[:2], (6, 6), seed=1)
    with pytest.raises(ValueError, match=r"^DART needs one image-token count .*shape_key\)$"):
        model.apply(params, ids, NextImages(pixels, sizes), mask, reduction=DART)
    with pytest.raises(ValueError, match=r"^divprune needs one image-block length .*shape_key\)$"):
        model.apply(params, ids, NextImages(pixels, sizes), mask, reduction=SELECT["divprune"])
    big = ReductionConfig("t-big", None, Stage2Config((2,), (), positions="keep", method="dart",
                                                      keep=(4 + 8 * 40,)))
    ids, mask, pixels, sizes = next_batch(hf, SIZES[1:2], (6,), seed=1)
    with pytest.raises(ValueError, match=r"^DART keeps 324 image tokens .* the image block has"):
        model.apply(params, ids, NextImages(pixels, sizes), mask, reduction=big)


@pytest.mark.parametrize("handle", [LlavaNext, LlavaOnevision])
def test_handles_run_dart_and_refuse_other_zoo_methods_in_one_line(handle):
    make = _next if handle is LlavaNext else _onevision
    _, cfg, params, model, *_ = make()
    family = "llavanext" if handle is LlavaNext else "llavaov"
    h = handle(cfg, model, params)
    assert h.reduction(DART) is DART and h.reduction(SELECT["divprune"]) is SELECT["divprune"]
    with pytest.raises(ValueError, match=rf"^llava15-pool-64: pool is not wired into "
                                         rf"{handle.__name__} \(its zoo methods: dart, "
                                         rf"divprune, random\)") as err:
        h.reduction("llava15-pool-64")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=rf"^{family}-dart-\d+: stage2.keep=\d+ exceeds"):
        h.reduction(f"{family}-dart-640" if handle is LlavaNext else "llavaov-dart-810")


@pytest.mark.parametrize("name", ["dart", "divprune"])
def test_next_handle_generation_starts_with_the_reduced_argmax(name):
    """Prefill + KV-cached decode through the NeXT handle (DART: kept positions; DivPrune:
    a shorter spliced block): the first token is the reduced forward's argmax at each
    sample's last row, and the second sample decodes as it does alone (batch 1)."""
    hf, cfg, params, model, ids, mask, images, blocks = _next()
    red = DART if name == "dart" else SELECT[name]

    class Tiny(LlavaNext):
        pad_id = 0      # no tokenizer directory

    handle = Tiny(cfg, model, params)
    logits = np.asarray(handle.logits(ids, images, mask, reduction=red))
    kept = red.image_counts(red.select.budget if red.select else len(blocks[0]))[-1]
    lengths = mask.sum(1) - (len(blocks[0]) - kept)
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": images,
             "has_image": np.ones(len(ids), bool)}
    tokens = np.asarray(handle.generate_batch(batch, max_new_tokens=3, reduction=red).tokens)
    for row in range(len(ids)):
        assert tokens[row, 0] == int(np.argmax(logits[row, lengths[row] - 1]))
    one = {"input_ids": ids[1:], "attention_mask": mask[1:], "has_image": batch["has_image"][1:],
           "pixel_values": NextImages(images.pixels[1:], images.sizes[1:])}
    alone = np.asarray(handle.generate_batch(one, max_new_tokens=3, reduction=red).tokens)
    np.testing.assert_array_equal(alone[0], tokens[1])
