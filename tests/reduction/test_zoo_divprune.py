"""DivPrune selection against the NumPy oracle (docs/BASELINES.md §1)."""
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.reduction import divprune_budget, divprune_select
from tests.reduction import zoo_oracle as ref
from tests.reduction.zoo_cases import (F32_GAP, F64_GAP, MODES, assert_indices_equal, clustered,
                                       run_mode, x64)


def _check(out, want, b=None):
    assert_indices_equal(out, want, ("select_order", "keep"))
    assert np.all(np.diff(np.asarray(out["keep"]), axis=1) >= 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float64_random_matches_oracle(seed, mode):
    x = np.random.default_rng(seed).normal(size=(3, 48, 16))
    want = ref.divprune(x, 16)
    with x64(), run_mode(mode):
        out = divprune_select(jnp.asarray(x), 16)
    _check(out, want)


@pytest.mark.parametrize("eps", [1e-3, 1e-4])
def test_float64_near_ties_match_oracle(eps):
    """Clustered rows: decisions are won by ~eps^2 (far below float32 resolution)."""
    x = clustered(np.random.default_rng(7), 2, 48, 16, 6, eps)
    want = ref.divprune(x, 20)
    assert F64_GAP < want["margin"] < 1e-6, "the draw must really be a near-tie"
    with x64():
        _check(divprune_select(jnp.asarray(x), 20), want)


@pytest.mark.parametrize("seed", [3, 4])
def test_float32_matches_oracle_when_decided(seed):
    x = np.random.default_rng(seed).normal(size=(2, 48, 16)).astype(np.float32)
    want = ref.divprune(x, 12)
    if want["margin"] < F32_GAP:
        pytest.skip("draw not decided at float32 resolution")
    _check(divprune_select(jnp.asarray(x), 12), want)


def test_exact_ties_take_the_first_maximum():
    """Orthonormal rows: every distance is exactly 1 (0 on the diagonal), so
    every pick is a tie and the first maximum wins: 0, 1, 2, ..."""
    x = np.eye(12, dtype=np.float32)[None]
    out = divprune_select(jnp.asarray(x), 5)
    np.testing.assert_array_equal(out["select_order"][0], [0, 1, 2, 3, 4])


def test_second_smallest_counts_duplicates():
    """A token with an exact duplicate has second-smallest distance 0 and is not
    first (DivPrune's first pick is the most isolated token)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 10, 6))
    x[0, 3] = x[0, 0]
    with x64():
        out = divprune_select(jnp.asarray(x), 4)
    want = ref.divprune(x, 4)
    _check(out, want)
    assert out["select_order"][0, 0] not in (0, 3)


def test_batched_equals_per_sample():
    x = np.random.default_rng(11).normal(size=(4, 40, 8))
    with x64():
        batched = divprune_select(jnp.asarray(x), 10)
        for b in range(4):
            single = divprune_select(jnp.asarray(x[b:b + 1]), 10)
            for key in batched:
                np.testing.assert_array_equal(batched[key][b], single[key][0])


def test_budget_and_bad_sizes():
    assert divprune_budget(0.098) == 56
    assert divprune_budget(64 / 576) == 64
    with pytest.raises(ValueError):
        divprune_budget(1.5)
    x = jnp.zeros((1, 8, 4))
    with pytest.raises(ValueError):
        divprune_select(x, 9)
    with pytest.raises(ValueError):
        divprune_select(x, 0)
