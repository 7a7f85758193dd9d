"""The random and pool controls (docs/BASELINES.md §7)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from duet_jax.reduction import pool_bins, pool_side, pool_tokens, random_select
from tests.reduction import zoo_oracle as ref
from tests.reduction.zoo_cases import MODES, run_mode, x64


@pytest.mark.parametrize("mode", MODES)
def test_random_is_seeded_ascending_and_without_replacement(mode):
    key = jax.random.key(0)
    with run_mode(mode):
        a = np.asarray(random_select(key, 4, 64)["keep"])
        b = np.asarray(random_select(key, 4, 64)["keep"])
    assert a.dtype == np.int32 and a.shape == (4, 64)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a, axis=1) > 0)                  # ascending, hence distinct
    assert a.min() >= 0 and a.max() < 576
    assert len({tuple(r) for r in a}) == 4                  # samples differ
    c = np.asarray(random_select(jax.random.key(1), 4, 64)["keep"])
    assert not np.array_equal(a, c)


def test_random_sample_does_not_depend_on_batch_size():
    key = jax.random.key(3)
    big = np.asarray(random_select(key, 8, 32)["keep"])
    for batch in (1, 3):
        np.testing.assert_array_equal(random_select(key, batch, 32)["keep"], big[:batch])
    # the definition: sample b draws from fold_in(key, b)
    want = np.sort(jax.random.choice(jax.random.fold_in(key, 5), 576, (32,), replace=False))
    np.testing.assert_array_equal(big[5], want)


def test_random_is_uniform():
    keep = np.asarray(random_select(jax.random.key(7), 2000, 8, n=16)["keep"])
    counts = np.bincount(keep.ravel(), minlength=16)
    expected = 2000 * 8 / 16
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 40.0, counts                              # 15 dof: p < 1e-3 beyond ~37.7


@pytest.mark.parametrize("k,side", [(64, 8), (128, 11), (192, 13), (576, 24), (1, 1)])
def test_pool_matches_oracle_and_torch(k, side):
    assert pool_side(k) == side
    x = np.random.default_rng(k).normal(size=(2, 576, 6))
    want = ref.pool_tokens(x, k)
    torch_out = torch.nn.functional.adaptive_avg_pool2d(
        torch.tensor(x).reshape(2, 24, 24, 6).permute(0, 3, 1, 2), side)
    torch_out = torch_out.permute(0, 2, 3, 1).reshape(2, side * side, 6).numpy()
    np.testing.assert_allclose(want, torch_out, atol=1e-12)
    with x64():
        got = np.asarray(pool_tokens(jnp.asarray(x), k)["tokens"])
    assert got.shape == (2, side * side, 6)
    np.testing.assert_allclose(got, want, atol=1e-12)
    got32 = np.asarray(pool_tokens(jnp.asarray(x, jnp.float32), k)["tokens"])
    np.testing.assert_allclose(got32, want, atol=1e-5)


def test_pool_bins():
    assert pool_bins(24, 8) == [(3 * u, 3 * u + 3) for u in range(8)]
    bins = pool_bins(24, 11)
    assert bins[0] == (0, 3) and bins[1] == (2, 5) and bins[-1] == (21, 24)


def test_pool_bad_sizes():
    with pytest.raises(ValueError):
        pool_tokens(jnp.zeros((1, 575, 4)), 64)
    with pytest.raises(ValueError):
        pool_tokens(jnp.zeros((1, 576, 4)), 577)
    with pytest.raises(ValueError):
        random_select(jax.random.key(0), 1, 577)
