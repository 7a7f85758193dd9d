"""CDPruner selection against the oracle (docs/BASELINES.md §4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.reduction import cdpruner_select
from tests.reduction import zoo_oracle as ref
from tests.reduction.zoo_cases import F32_GAP, MODES, assert_indices_equal, run_mode, x64


def _draw(seed, batch=2, n=48, d=32, p=8, m=2, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, n, d)).astype(dtype), rng.normal(size=(batch, n, p)).astype(dtype),
            rng.normal(size=(m, p)).astype(dtype))


def _check(out, want, rtol=1e-12):
    assert_indices_equal(out, want, ("select_order", "keep"))
    np.testing.assert_allclose(out["relevance"], want["relevance"], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float64_matches_oracle(seed, mode):
    feats, img, txt = _draw(seed)
    want = ref.cdpruner(feats, img, txt, 16)
    with x64(), run_mode(mode):
        out = cdpruner_select(jnp.asarray(feats), jnp.asarray(img), jnp.asarray(txt), 16)
    _check(out, want)


def test_float64_near_ties_match_oracle():
    """Clusters of near-duplicate tokens (projector rows and image embeddings both
    offset by ~1e-4): the gains inside a cluster differ only at that level."""
    rng = np.random.default_rng(4)
    which = rng.integers(0, 12, size=48)
    feats = rng.normal(size=(12, 32))[which][None] + 1e-4 * rng.normal(size=(1, 48, 32))
    img = rng.normal(size=(12, 8))[which][None] + 1e-4 * rng.normal(size=(1, 48, 8))
    txt = rng.normal(size=(3, 8))
    want = ref.cdpruner(feats, img, txt, 20)
    assert want["margin"] < 1e-6
    with x64():
        _check(cdpruner_select(jnp.asarray(feats), jnp.asarray(img), jnp.asarray(txt), 20), want)


def test_float32_matches_oracle_when_decided():
    feats, img, txt = _draw(7, dtype=np.float32)
    want = ref.cdpruner(feats, img, txt, 12)
    if want["margin"] < F32_GAP:
        pytest.skip("draw not decided at float32 resolution")
    _check(cdpruner_select(jnp.asarray(feats), jnp.asarray(img), jnp.asarray(txt), 12), want,
           rtol=1e-5)


def test_relevance_is_negated_and_scaled_over_the_batch():
    feats, img, txt = _draw(8, batch=3)
    with x64():
        rel = np.asarray(cdpruner_select(jnp.asarray(feats), jnp.asarray(img),
                                         jnp.asarray(txt), 4)["relevance"])
    assert 0 < rel.min() < 1e-5                                      # eps / range
    assert np.isclose(rel.max() - rel.min(), 1.0, atol=1e-12)
    cos = np.einsum("bnp,mp->bnm", img / np.linalg.norm(img, axis=-1, keepdims=True),
                    txt / np.linalg.norm(txt, axis=-1, keepdims=True)).mean(-1)
    assert np.argmax(rel) == np.argmin(cos)                           # the minus sign
    per_image_min = rel.min(axis=1)
    assert np.sum(per_image_min > 1e-5) >= 2                          # one batch-wide minimum


def test_per_sample_is_vmap_over_singleton_batches():
    """Each image with its own question: vmap with a batch of 1 per sample equals
    separate batch-1 calls (the official evaluation's setting)."""
    feats, img, _ = _draw(9, batch=3)
    txt = np.random.default_rng(9).normal(size=(3, 2, 8))
    with x64():
        fn = jax.vmap(lambda f, i, t: cdpruner_select(f[None], i[None], t, 10))
        batched = fn(jnp.asarray(feats), jnp.asarray(img), jnp.asarray(txt))
        for b in range(3):
            want = ref.cdpruner(feats[b:b + 1], img[b:b + 1], txt[b], 10)
            np.testing.assert_array_equal(batched["select_order"][b, 0], want["select_order"][0])
            single = cdpruner_select(jnp.asarray(feats[b:b + 1]), jnp.asarray(img[b:b + 1]),
                                     jnp.asarray(txt[b]), 10)
            np.testing.assert_array_equal(batched["keep"][b], single["keep"])


def test_bad_sizes():
    feats, img, txt = _draw(0)
    with pytest.raises(ValueError):
        cdpruner_select(jnp.asarray(feats), jnp.asarray(img), jnp.asarray(txt), 49)
    with pytest.raises(ValueError):
        cdpruner_select(jnp.asarray(feats), jnp.asarray(img[:, :, :4]), jnp.asarray(txt), 4)
