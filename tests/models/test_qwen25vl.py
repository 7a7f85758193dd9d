"""Qwen2.5-VL: Flax vs HF PyTorch (tiny random configs, fp32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from duet_jax.models.qwen25vl import Qwen25VLModel, rope_index
from duet_jax.models.qwen_vision import grid_layout, vision_forward
from tests.helpers.tiny_qwen import hf_inputs, jax_params, qwen_inputs, tiny_qwen

SIZES = ((90, 130), (60, 60))


@pytest.fixture(scope="module")
def tiny():
    hf = tiny_qwen()
    cfg, params = jax_params(hf)
    return hf, cfg, params


def test_window_layout_matches_hf(tiny):
    from transformers.vision_utils import get_vision_window_index
    hf, cfg, _ = tiny
    grid = ((1, 6, 10), (2, 4, 4), (1, 8, 8))
    idx, cu = get_vision_window_index(torch.tensor(grid), 2, cfg.vision.window_size, 14)
    lay = grid_layout(cfg.vision, grid)
    np.testing.assert_array_equal(lay.window_index, idx.numpy())
    bounds = np.flatnonzero(np.diff(lay.window_segment)) + 1
    np.testing.assert_array_equal(np.r_[0, bounds, lay.window_segment.size], cu.numpy())


@pytest.mark.parametrize("sizes", [SIZES[:1], SIZES])
def test_vision_tower_matches_hf(tiny, sizes):
    hf, cfg, params = tiny
    _, pixels, grid = qwen_inputs(sizes)
    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(pixels), grid_thw=torch.tensor(grid)).pooler_output
    grids = tuple(map(tuple, grid.tolist()))
    out = vision_forward(cfg.vision, jax.tree.map(jnp.asarray, params["vision"]), jnp.asarray(pixels), grids)
    np.testing.assert_allclose(np.asarray(out.embeds), ref.numpy(), atol=1e-5, rtol=1e-5)


def test_rope_index_matches_hf(tiny):
    hf, cfg, _ = tiny
    ids, pixels, grid = qwen_inputs(SIZES)
    kw = hf_inputs(ids, pixels, grid)
    ref, delta = hf.model.get_rope_index(kw["input_ids"], kw["mm_token_type_ids"], kw["image_grid_thw"])
    pos, nxt = rope_index(cfg, ids, grid)
    np.testing.assert_array_equal(pos, ref.numpy())
    np.testing.assert_array_equal(nxt, (delta[:, 0] + ids.shape[1]).numpy())


@pytest.mark.parametrize("sizes", [SIZES[:1], SIZES])
def test_logits_match_hf(tiny, sizes):
    hf, cfg, params = tiny
    ids, pixels, grid = qwen_inputs(sizes)
    with torch.no_grad():
        ref = hf(**hf_inputs(ids, pixels, grid)).logits.numpy()
    pos, _ = rope_index(cfg, ids, grid)
    model = Qwen25VLModel(cfg)
    logits = model.apply(jax.tree.map(jnp.asarray, params), jnp.asarray(ids), jnp.asarray(pixels),
                         tuple(map(tuple, grid.tolist())), jnp.asarray(pos))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sizes", [SIZES[:1], SIZES])
def test_greedy_decode_matches_hf(tiny, sizes):
    from duet_jax.generation.decode import generate_qwen
    hf, cfg, params = tiny
    ids, pixels, grid = qwen_inputs(sizes, seed=2)
    n_new = 8
    with torch.no_grad():
        ref = hf.generate(**hf_inputs(ids, pixels, grid), max_new_tokens=n_new, min_new_tokens=n_new,
                          do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].numpy()
    pos, nxt = rope_index(cfg, ids, grid)
    out = generate_qwen(Qwen25VLModel(cfg), jax.tree.map(jnp.asarray, params), jnp.asarray(ids),
                        jnp.asarray(pixels), tuple(map(tuple, grid.tolist())), jnp.asarray(pos),
                        jnp.asarray(nxt), max_new_tokens=n_new)
    np.testing.assert_array_equal(np.asarray(out.tokens)[0], ref)


def test_bad_inputs_are_clear_errors(tiny):
    from duet_jax.models.qwen_vision import check_grids
    _, cfg, params = tiny
    ids, pixels, grid = qwen_inputs(SIZES[:1])
    with pytest.raises(ValueError, match="placeholder tokens but its grid"):
        rope_index(cfg, ids, [[1, 6, 12]])
    with pytest.raises(ValueError, match="more image blocks than image grids"):
        rope_index(cfg, ids, [])
    with pytest.raises(ValueError, match="left over"):
        rope_index(cfg, ids, [grid[0], grid[0]])
    with pytest.raises(ValueError, match="does not fit the 2x2 merge"):
        check_grids(cfg.vision, [[1, 5, 10]])
    with pytest.raises(ValueError, match="pass the processor's image_grid_thw"):
        vision_forward(cfg.vision, params["vision"], jnp.asarray(pixels[:-4]), ((1, 6, 10),))


def test_stage1_scores_do_not_depend_on_the_query_tiling(tiny):
    from duet_jax.models.qwen_vision import stage1_inputs
    _, cfg, params = tiny
    _, pixels, grid = qwen_inputs(SIZES[:1])
    grids = tuple(map(tuple, grid.tolist()))
    vp = jax.tree.map(jnp.asarray, params["vision"])
    out = vision_forward(cfg.vision, vp, jnp.asarray(pixels), grids)
    whole = stage1_inputs(cfg.vision, vp, out.last_input, grids)
    tiled = stage1_inputs(cfg.vision, vp, out.last_input, grids, query_block=16)   # 60 = 3*16 + 12
    for a, b in zip(whole, tiled):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
    # every query row's probabilities sum to 1: the column sums add up to N / 4 per token on average
    np.testing.assert_allclose(float(whole[0].sum()), pixels.shape[0] / 4, rtol=1e-5)
