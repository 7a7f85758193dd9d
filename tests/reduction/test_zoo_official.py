"""The zoo functions against the unmodified official code, executed (docs/BASELINES.md §8).

Skipped unless ``DUET_ZOO_OFFICIAL`` points at clones of the official
repositories (see tests/reduction/zoo_official.py). LLaVA-1.5 sizes, float64:
the official functions run with PyTorch's default dtype set to float64, so the
buffers they allocate themselves (CDPruner's ``cis``) are float64 too.
"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from duet_jax.reduction import (cdpruner_select, dart_select, dart_token_topk, divprune_select,
                                vispruner_select, vscan_stage1)
from tests.reduction import zoo_official as official
from tests.reduction.zoo_cases import probabilities, x64


def _needs(method):
    return pytest.mark.skipif(not official.available(method),
                              reason=f"set {official.ENV} to clones of the official repositories")


@pytest.fixture
def torch64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _mask_to_keep(mask):
    return [np.nonzero(row)[0] for row in np.asarray(mask)]


@_needs("divprune")
@pytest.mark.parametrize("seed", [0, 1])
def test_divprune(seed, torch64):
    x = np.random.default_rng(seed).normal(size=(2, 576, 64))
    with x64():
        out = divprune_select(jnp.asarray(x), 64)
    for b in range(2):
        np.testing.assert_array_equal(out["select_order"][b],
                                      official.divprune(torch.tensor(x[b]), 64).numpy())


@_needs("dart")
@pytest.mark.parametrize("budget", [64, 128, 192])
def test_dart(budget, torch64):
    rng = np.random.default_rng(budget)
    hidden, keys = rng.normal(size=(700, 64)), rng.normal(size=(4, 700, 16))
    want = official.dart(torch.tensor(hidden), torch.tensor(keys), image_start=35, n_image=576,
                         n_pivot_image=4, n_pivot_text=4, max_num_trunction=budget)
    with x64():
        out = dart_select(jnp.asarray(hidden), jnp.asarray(keys),
                          token_topk=dart_token_topk(8, budget))
    np.testing.assert_array_equal(out["keep"], np.sort(want.numpy()))


@_needs("vispruner")
@pytest.mark.parametrize("T,ratio", [(64, 0.5), (128, 0.5), (192, 0.5), (64, 0.75)])
def test_vispruner(T, ratio, torch64):
    rng = np.random.default_rng(T)
    feats, attn = rng.normal(size=(2, 576, 64)), probabilities(rng, 2, 16, 576)
    mask = official.vispruner(torch.tensor(feats), torch.tensor(attn), T, ratio)
    with x64():
        out = vispruner_select(jnp.asarray(feats), jnp.asarray(attn), T, ratio)
    for b, keep in enumerate(_mask_to_keep(mask)):
        np.testing.assert_array_equal(out["keep"][b], keep)


@_needs("cdpruner")
@pytest.mark.parametrize("T", [64, 128])
def test_cdpruner(T, torch64):
    rng = np.random.default_rng(T)
    feats, img, txt = (rng.normal(size=(2, 576, 256)), rng.normal(size=(2, 576, 32)),
                       rng.normal(size=(2, 32)))
    mask = official.cdpruner(torch.tensor(feats), torch.tensor(img), torch.tensor(txt), T)
    with x64():
        out = cdpruner_select(jnp.asarray(feats), jnp.asarray(img), jnp.asarray(txt), T)
    for b, keep in enumerate(_mask_to_keep(mask)):
        np.testing.assert_array_equal(out["keep"][b], keep)


@_needs("vscan")
@pytest.mark.parametrize("T", [64, 100, 192, 576])
def test_vscan(T, torch64):
    rng = np.random.default_rng(T)
    attn, proj = probabilities(rng, 24, 2, 16, 576), rng.normal(size=(2, 576, 32))
    feats, mask = official.vscan(torch.tensor(attn), torch.tensor(proj), T)
    with x64():
        out = vscan_stage1(jnp.asarray(attn), jnp.asarray(proj), T)
    mask, feats = np.asarray(mask), feats.numpy()
    for b, keep in enumerate(_mask_to_keep(mask)):
        np.testing.assert_array_equal(out["keep"][b], keep)
        np.testing.assert_allclose(out["merged"][b], feats[b][mask[b]], atol=1e-12)
