"""VScan stage 1 against the oracle (docs/BASELINES.md §5)."""
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.reduction import vscan_counts, vscan_stage1
from tests.reduction import zoo_oracle as ref
from tests.reduction.zoo_cases import (F32_GAP, MODES, assert_indices_equal, probabilities,
                                       run_mode, x64)

INDEX_KEYS = ("keep", "local", "global", "merge_target")


def _draw(seed, batch=2, n=576, d=16, layers=24, heads=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (probabilities(rng, layers, batch, heads, n).astype(dtype),
            rng.normal(size=(batch, n, d)).astype(dtype))


def _check(out, want, atol=1e-12):
    assert_indices_equal(out, want, INDEX_KEYS)
    np.testing.assert_allclose(out["merged"], want["merged"], atol=atol, rtol=atol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T", [64, 100, 192])
def test_float64_matches_oracle(T, mode):
    attn, proj = _draw(T)
    want = ref.vscan_stage1(attn, proj, T)
    with x64(), run_mode(mode):
        out = vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), T)
    _check(out, want)
    assert out["keep"].shape[1] == vscan_counts(T)["kept"]


def test_small_grid_matches_oracle():
    """A 12 x 12 grid has four windows; k_w = n_loc // 4."""
    attn, proj = _draw(3, n=144, layers=8)
    want = ref.vscan_stage1(attn, proj, 30)
    with x64():
        _check(vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), 30), want)


def test_near_ties_match_oracle():
    """Attention within each window and projector rows made nearly equal (1e-9 apart)."""
    rng = np.random.default_rng(5)
    attn, proj = _draw(5)
    attn[5] = 0.01 + 1e-9 * rng.normal(size=attn[5].shape)
    proj = proj[:, :1] + proj * 1e-5
    want = ref.vscan_stage1(attn, proj, 96)
    assert want["margin"] < 1e-7
    with x64():
        _check(vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), 96), want)


def test_float32_matches_oracle_when_decided():
    for seed in range(20):
        attn, proj = _draw(seed, n=144, layers=8, d=8, dtype=np.float32)
        want = ref.vscan_stage1(attn, proj, 40)
        if want["margin"] >= F32_GAP:
            _check(vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), 40), want, atol=1e-5)
            return
    pytest.skip("no draw decided at float32 resolution")


def test_local_scan_is_row_major_by_window_then_descending():
    attn = np.zeros((24, 1, 1, 576))
    attn[5, 0, 0] = np.arange(576)[::-1] / 576.0        # larger at the top-left of every window
    out = vscan_stage1(jnp.asarray(attn, jnp.float32), jnp.zeros((1, 576, 4), jnp.float32), 64)
    local = np.asarray(out["local"][0])
    assert local.shape == (32,)                         # 16 windows x 2
    np.testing.assert_array_equal(local[:4], [0, 1, 6, 7])   # window (0,0) then (0,1)
    np.testing.assert_array_equal(local[8:10], [144, 145])   # window (1, 0) starts at row 6


def test_keep_everything_and_uneven_counts():
    attn, proj = _draw(7)
    out = vscan_stage1(jnp.asarray(attn, jnp.float32), jnp.asarray(proj, jnp.float32), 576)
    np.testing.assert_array_equal(out["keep"], np.tile(np.arange(576), (2, 1)))
    np.testing.assert_array_equal(out["merged"], proj.astype(np.float32))
    assert out["merge_target"].shape == (2, 0)
    assert vscan_counts(100)["kept"] == 98 and vscan_counts(96)["kept"] == 96
    assert vscan_counts(288)["kept"] == 288


def test_batched_equals_per_sample():
    attn, proj = _draw(8, batch=3)
    with x64():
        batched = vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), 100)
        for b in range(3):
            single = vscan_stage1(jnp.asarray(attn[:, b:b + 1]), jnp.asarray(proj[b:b + 1]), 100)
            for key in batched:
                np.testing.assert_array_equal(batched[key][b], single[key][0], err_msg=key)


def test_bad_inputs():
    attn, proj = _draw(0, n=100, layers=8)
    with pytest.raises(ValueError):
        vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), 50)    # 10 x 10 grid: no 6 x 6 windows
    attn, proj = _draw(0, layers=4)
    with pytest.raises(ValueError):
        vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), 64)    # layer 5 missing
