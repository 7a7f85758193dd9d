"""VisPruner selection against the oracle, validated in float64 (docs/BASELINES.md §3)."""
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.reduction import vispruner_counts, vispruner_schedule, vispruner_select
from tests.reduction import zoo_oracle as ref
from tests.reduction.zoo_cases import (F32_GAP, MODES, assert_indices_equal, clustered,
                                       probabilities, run_mode, x64)


def _draw(seed, batch, n, c, heads=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, n, c)).astype(dtype),
            probabilities(rng, batch, heads, n).astype(dtype))


def _check(out, want):
    assert_indices_equal(out, want, ("important", "selected_order", "keep"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_float64_small_matches_oracle(seed, mode):
    feats, attn = _draw(seed, 2, 64, 16)
    want = ref.vispruner(feats, attn, 16, 0.5)
    with x64(), run_mode(mode):
        out = vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 16, 0.5)
    _check(out, want)


@pytest.mark.parametrize("T,ratio", [(64, 0.5), (128, 0.5), (192, 0.5), (64, 0.75), (100, 0.3)])
def test_float64_llava_size_matches_oracle(T, ratio):
    """576 patches: 48-64 rounds whose orders all feed the next split."""
    feats, attn = _draw(T, 1, 576, 24)
    want = ref.vispruner(feats, attn, T, ratio)
    with x64():
        _check(vispruner_select(jnp.asarray(feats), jnp.asarray(attn), T, ratio), want)


def test_float64_near_ties_match_oracle():
    rng = np.random.default_rng(3)
    feats = clustered(rng, 2, 64, 16, 5, 1e-3)
    attn = probabilities(rng, 2, 4, 64)
    want = ref.vispruner(feats, attn, 16, 0.5)
    assert want["margin"] < 1e-6
    with x64():
        _check(vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 16, 0.5), want)


def test_float32_matches_oracle_when_decided():
    for seed in range(10, 30):
        feats, attn = _draw(seed, 1, 40, 16, dtype=np.float32)
        want = ref.vispruner(feats, attn, 12, 0.5)
        if want["margin"] >= F32_GAP:
            _check(vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 12, 0.5), want)
            return
    pytest.skip("no draw decided at float32 resolution")


def test_batched_equals_per_sample():
    feats, attn = _draw(5, 3, 64, 16)
    with x64():
        batched = vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 24, 0.5)
        for b in range(3):
            single = vispruner_select(jnp.asarray(feats[b:b + 1]), jnp.asarray(attn[b:b + 1]),
                                      24, 0.5)
            for key in batched:
                np.testing.assert_array_equal(batched[key][b], single[key][0], err_msg=key)


def test_edge_budgets():
    feats, attn = _draw(6, 2, 64, 16)
    with x64():
        only_important = vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 16, 1.0)
        everything = vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 64, 0.5)
    _check(only_important, ref.vispruner(feats, attn, 16, 1.0))
    assert only_important["selected_order"].shape == (2, 16)
    np.testing.assert_array_equal(everything["keep"], np.tile(np.arange(64), (2, 1)))


def test_schedule_and_odd_residual():
    assert vispruner_counts(64, 0.5) == (32, 32)
    assert vispruner_counts(64, 0.75) == (48, 16)
    rounds = vispruner_schedule(576, 64, 0.5)
    assert len(rounds) == 64 and rounds[0] == (544, 8) and rounds[-1] == (40, 8)
    assert [len(vispruner_schedule(576, t, 0.5)) for t in (128, 192)] == [56, 48]
    assert vispruner_schedule(576, 100, 0.3)[-1][1] == 4      # last round drops the remainder
    with pytest.raises(ValueError, match="odd"):
        vispruner_schedule(576, 63, 0.5)                       # 576 - 31 = 545 residual tokens
    with pytest.raises(ValueError, match="even-position"):
        vispruner_schedule(32, 8, 0.5)                         # last round: r = 8 > 12 / 2
    feats, attn = _draw(0, 1, 576, 8, dtype=np.float32)
    with pytest.raises(ValueError, match="odd"):
        vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 63, 0.5)
    with pytest.raises(ValueError):
        vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 577, 0.5)
