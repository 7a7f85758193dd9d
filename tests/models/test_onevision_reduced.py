"""Reduced LLaVA-OneVision forward == a slow per-sample reference: each crop through HF
SigLIP (eager attention), the CLS-free scores computed here from HF's attention map,
the NumPy Stage-1 oracle, the docs/ALGORITHM.md §2.9 block assembled from explicit
canvas coordinates, then the unreduced layers on explicitly gathered subsets, ranked with
HF PyTorch eager attention. Images of two grids in one batch, and a video batch."""
import functools

import numpy as np
import pytest
import torch
import jax

from duet_jax.models import anyres
from duet_jax.models import onevision_layout as layout
from duet_jax.models.llava_next import NextImages
from duet_jax.models.onevision import OnevisionModel
from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config, get_preset
from duet_jax.reduction.stage1_nocls import clipped_counts
from tests.helpers.tiny_hf import jax_params
from tests.helpers.tiny_onevision import (IMAGE_TOKEN, SIZES, VIDEO_TOKEN, block_batch,
                                          hf_block_features, image_pixels, random_videos,
                                          tiny_onevision)
from tests.models.test_next_reduced import _reference
from tests.reduction import oracle

REDUCTIONS = {
    "duet": ReductionConfig("t-duet", Stage1Config(5, 3, 2, cls_token=False),
                            Stage2Config((1, 3), (0.5, 0.0))),
    "stage1-only-last": ReductionConfig("t-s1", Stage1Config(4, 6, 3, cls_token=False), None),
    "pdrop": ReductionConfig("t-pdrop", None, Stage2Config((2,), (0.25,), queries="last")),
}


def _hf_crop_merge(hf, crop, stage1):
    """One crop [3, S, S] -> (projected kept rows [K, Dt] in place, kept patch indices [K])."""
    tower = hf.model.vision_tower
    idx = hf.config.vision_feature_layer % (tower.config.num_hidden_layers + 1) - 1
    with torch.no_grad():
        out = tower(torch.tensor(crop[None]), output_attentions=True, output_hidden_states=True)
        layer = getattr(tower, "vision_model", tower).encoder.layers[idx]
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[idx]))
        metric = keys.view(*keys.shape[:2], layer.self_attn.num_heads, -1).mean(2)[0].double().numpy()
    probs = out.attentions[idx][0].double().numpy()                       # [H, N, N]
    scores = probs.mean(0).sum(0)                                         # attention received
    feats = out.hidden_states[idx + 1][0].double().numpy()
    d, c = clipped_counts(len(scores), stage1.dominant, stage1.contextual)
    pad = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:]), a])[None]   # a zero "CLS" row
    tokens, pos, _ = oracle.vision_merge(scores[None, None], pad(feats), pad(metric), d + 1, c,
                                         stage1.width, "duet")
    kept, where = tokens[0, 1:], pos[0, 1:] - 1
    order = np.argsort(where)
    with torch.no_grad():
        proj = hf.model.multi_modal_projector(torch.tensor(kept[order], dtype=torch.float32))
    return proj.numpy(), where[order]


def _image_block(hf, cfg, pixels, size, stage1):
    """docs/ALGORITHM.md §2.9 block of one image: base crop in place, tiles' rows by canvas raster order."""
    gh, gw = anyres.grid_shape(cfg, size)
    n = cfg.patches_per_side
    crops = [_hf_crop_merge(hf, pixels[c], stage1) for c in range(1 + gh * gw)]
    tiles = []
    for t, (rows, where) in enumerate(crops[1:]):
        ty, tx = divmod(t, gw)
        tiles += [((ty * n + p // n, tx * n + p % n), r) for p, r in zip(where, rows)]
    tiles.sort(key=lambda x: x[0])
    return np.concatenate([crops[0][0], np.stack([r for _, r in tiles])])


@functools.lru_cache(maxsize=None)
def _setup():
    hf = tiny_onevision(text_layers=4, scale=0.2)
    return (hf, *jax_params(hf))


def _check(hf, model, params, ids, mask, pixels, blocks, red):
    prompt_lengths = mask.sum(1)
    salient = np.zeros(ids.shape, bool)
    logits, seq = jax.jit(model.apply, static_argnames=("reduction",))(
        params, ids, pixels, mask, reduction=red, prompt_lengths=prompt_lengths)
    logits, valid = np.asarray(logits), np.asarray(seq.valid)
    n0 = model.token_counts(pixels, red)
    for b in range(len(ids)):
        assert len(blocks[b]) == n0[b]
        ids_b = np.where(ids[b] == VIDEO_TOKEN, IMAGE_TOKEN, ids[b])
        ref = _reference(hf, model, params, ids_b, blocks[b], int(mask[b].sum()),
                         int(prompt_lengths[b]), red, salient[b])
        assert valid[b].sum() == len(ref)
        np.testing.assert_allclose(logits[b, :len(ref)], ref, atol=1e-4, rtol=0)
    return n0


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduced_image_forward_equals_gathered_reference(name):
    hf, cfg, params = _setup()
    red = REDUCTIONS[name]
    pixels, sizes = image_pixels(hf, SIZES[:2], seed=3)
    ids, mask = block_batch([layout.num_image_tokens(cfg, s) for s in sizes], (14, 8),
                            IMAGE_TOKEN, seed=3)
    if red.stage1 is None:
        blocks = [f.numpy() for f in hf_block_features(hf, pixels, sizes)]
    else:
        blocks = [_image_block(hf, cfg, pixels[b], tuple(sizes[b]), red.stage1) for b in range(2)]
    n0 = _check(hf, OnevisionModel(cfg), params, ids, mask, NextImages(pixels, sizes), blocks, red)
    assert len(set(n0)) == 2                                   # two grids, two n_0


@pytest.mark.parametrize("name", ["duet"])
def test_reduced_video_forward_equals_gathered_reference(name):
    hf, cfg, params = _setup()
    red = REDUCTIONS[name]
    videos = random_videos(2, 3, seed=6)
    ids, mask = block_batch([layout.num_video_tokens(cfg, 3)] * 2, (9, 5), VIDEO_TOKEN, seed=6)
    blocks = [np.concatenate([_hf_crop_merge(hf, frame, red.stage1)[0] for frame in v])
              for v in videos]
    _check(hf, OnevisionModel(cfg), params, ids, mask, videos, blocks, red)


def test_cls_stage1_is_rejected_and_presets_fit_onevision_7b():
    hf, cfg, params = _setup()
    pixels, sizes = image_pixels(hf, SIZES[:1])
    with pytest.raises(ValueError, match="no CLS token"):
        OnevisionModel(cfg).image_features(params, NextImages(pixels, sizes), Stage1Config(4, 2))
    for name in ("llavaov-duet-810", "llavaov-duet-403", "llavaov-duet-203"):
        red = get_preset(name)
        assert not red.stage1.cls_token and red.stage2.layers == (14, 21)
        red.validate(729, 28, crops=5)
