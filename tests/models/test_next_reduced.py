"""Reduced LLaVA-NeXT forward == a slow per-sample reference: each crop through HF
CLIP (eager attention) and the NumPy Stage-1 oracle, the docs/ALGORITHM.md §2.6 block
assembled from explicit canvas coordinates, then the unreduced layers on explicitly
gathered subsets, ranking with HF PyTorch eager attention; a batch mixes grids, so every sample has its
own n_0 and its own per-boundary counts."""
import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from duet_jax.models import anyres
from duet_jax.models.llava_next import LlavaNextModel, NextImages
from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
from tests.helpers.tiny_hf import jax_params
from tests.helpers.tiny_next import SIZES, hf_image_token_counts, next_batch, tiny_llava_next
from tests.models.test_reduced_forward import reference_language_model
from tests.models.test_zoo_forward import dart_reference
from tests.reduction import oracle

REDUCTIONS = {
    "duet": ReductionConfig("t-duet", Stage1Config(6, 3, 2), Stage2Config((1, 3), (0.5, 0.0))),
    "duet-last-3stage": ReductionConfig("t-last", Stage1Config(5, 2, 3),
                                        Stage2Config((1, 2, 3), (0.6, 0.3, 0.1), queries="last")),
    "visionzip": ReductionConfig("t-vz", Stage1Config(6, 4, mode="visionzip"), None),
    "duet-salient": ReductionConfig("t-sal", Stage1Config(4, 3, 2),
                                    Stage2Config((2,), (0.5,), queries="salient")),
    "pdrop": ReductionConfig("t-pdrop", None, Stage2Config((2,), (0.25,), queries="last")),
    "fastv": ReductionConfig("t-fastv", None, Stage2Config((2,), keep=(5,), queries="last",
                                                           positions="keep", method="fastv")),
}


def _hf_crop_merge(hf, crop, stage1):
    """One crop [3, S, S] -> (projected Stage-1 rows [K, Dt], vision positions [K])."""
    tower = hf.model.vision_tower
    with torch.no_grad():
        out = tower(torch.tensor(crop[None]), output_attentions=True, output_hidden_states=True)
        idx = len(out.hidden_states) - 1 + hf.config.vision_feature_layer
        layer = getattr(tower, "vision_model", tower).encoder.layers[idx]
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[idx]))
        metric = keys.view(*keys.shape[:2], layer.self_attn.num_heads, -1).mean(2)
        tokens, positions, _ = oracle.vision_merge(
            out.attentions[idx][:, :, 0, 1:].numpy().astype(np.float64),
            out.hidden_states[idx + 1].numpy().astype(np.float64),
            metric.numpy().astype(np.float64), stage1.dominant, stage1.contextual,
            stage1.width, stage1.mode)
        proj = hf.model.multi_modal_projector(torch.tensor(tokens, dtype=torch.float32))
    return proj[0].numpy(), np.asarray(positions[0])


def _next_block(hf, cfg, pixels, size, stage1):
    """docs/ALGORITHM.md §2.6 block of one image, assembled row by row from canvas coordinates."""
    gh, gw = anyres.grid_shape(cfg, size)
    n = cfg.patches_per_side
    crops = [_hf_crop_merge(hf, pixels[c], stage1) for c in range(1 + gh * gw)]
    d = stage1.dominant
    base, tiles = crops[0][0], crops[1:]
    dominant = []           # (canvas row, canvas col, feature row)
    for t, (rows, pos) in enumerate(tiles):
        ty, tx = divmod(t, gw)
        for r in range(1, d):
            p = int(pos[r]) - 1
            dominant.append((ty * n + p // n, tx * n + p % n, rows[r]))
    dominant.sort(key=lambda x: (x[0], x[1]))
    assert all(int(pos[0]) == 0 for _, pos in tiles)                  # slot 0 is CLS
    return np.concatenate([base, np.stack([x[2] for x in dominant]),
                           np.stack([rows[0] for rows, _ in tiles]),
                           np.concatenate([rows[d:] for rows, _ in tiles])])


def _reference(hf, model, params, ids, feats, length, prompt_len, red, salient):
    """Batch-1, unpadded, explicit gathers; logits of the final sequence."""
    cfg = model.config
    is_img = ids[:length] == cfg.image_token_index
    start, n_ids = int(np.argmax(is_img)), int(is_img.sum())
    emb = np.asarray(model.text.embed(params["text"], jnp.asarray(ids[None, :length])))[0]
    h = np.concatenate([emb[:start], feats, emb[start + n_ids:]])
    salient = np.concatenate([salient[:start], np.zeros(len(feats), bool),
                              salient[start + n_ids:length]])
    if red.stage2 is not None and red.stage2.method == "dart":
        return dart_reference(hf, model, params, h, start, len(feats), red.stage2)
    prompt_len -= n_ids - len(feats)
    return reference_language_model(hf, model, params, h, start, len(feats), prompt_len, red,
                                    salient)


@pytest.fixture(scope="module")
def setup():
    hf = tiny_llava_next(text_layers=4, kv_heads=2, scale=0.2)   # clear Stage-1 winners
    cfg, params = jax_params(hf)
    batch = next_batch(hf, SIZES[:2], (14, 8), seed=3)
    return hf, cfg, params, batch


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduced_forward_equals_gathered_reference(setup, name):
    hf, cfg, params, (ids, mask, pixels, sizes) = setup
    red = REDUCTIONS[name]
    model, images = LlavaNextModel(cfg), NextImages(pixels, sizes)
    prompt_lengths = mask.sum(1)
    salient = (np.random.default_rng(5).random(ids.shape) < 0.3) & (mask == 1)
    logits, seq = jax.jit(model.apply, static_argnames=("reduction",))(
        params, ids, images, mask, reduction=red, prompt_lengths=prompt_lengths,
        salient_mask=salient)
    logits, valid = np.asarray(logits), np.asarray(seq.valid)
    n0 = model.token_counts(images, red)
    assert len(set(n0)) == 2                                   # two grids, two n_0
    _, packed = hf_image_token_counts(hf, pixels, sizes)
    for b in range(len(ids)):
        feats = (packed[b].numpy() if red.stage1 is None
                 else _next_block(hf, cfg, pixels[b], tuple(sizes[b]), red.stage1))
        assert len(feats) == n0[b]
        ref = _reference(hf, model, params, ids[b], feats, int(mask[b].sum()),
                         int(prompt_lengths[b]), red, salient[b])
        assert valid[b].sum() == len(ref)
        np.testing.assert_allclose(logits[b, :len(ref)], ref, atol=1e-4, rtol=0)


def test_stage1_block_is_the_spec_layout(setup):
    """(1 + G) K rows: base crop, canvas-raster dominant patches, tile CLS, contextual."""
    hf, cfg, params, (ids, mask, pixels, sizes) = setup
    stage1 = REDUCTIONS["duet"].stage1
    model, images = LlavaNextModel(cfg), NextImages(pixels, sizes)
    feats = np.asarray(model.image_features(params, images, stage1).tokens)
    k = stage1.output_size(cfg.vision.num_patches)
    for b, size in enumerate(map(tuple, sizes)):
        block = _next_block(hf, cfg, pixels[b], size, stage1)
        assert len(block) == anyres.num_crops(cfg, size) * k
        np.testing.assert_allclose(feats[b, :len(block)], block, atol=1e-4, rtol=0)


def test_paper_mode_is_rejected(setup):
    hf, cfg, params, (ids, mask, pixels, sizes) = setup
    with pytest.raises(ValueError, match="CLS-carrying Stage 1"):
        LlavaNextModel(cfg).image_features(params, NextImages(pixels, sizes),
                                           Stage1Config(4, 2, 2, mode="paper"))
