"""The one next-token sampler: its top-p filter against a NumPy transcription of HF's
`TopPLogitsWarper` (min_tokens_to_keep=1), greedy, and seeded sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.generation.sampling import sample_token, top_p_filter


def hf_top_p(scores: np.ndarray, top_p: float) -> np.ndarray:
    """transformers.generation.logits_process.TopPLogitsWarper.__call__, in NumPy."""
    order = np.argsort(scores, axis=-1, kind="stable")                   # ascending
    sorted_logits = np.take_along_axis(scores, order, axis=-1)
    z = np.exp(sorted_logits - sorted_logits.max(-1, keepdims=True))
    cumulative = np.cumsum(z / z.sum(-1, keepdims=True), axis=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False                                      # min_tokens_to_keep=1
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, scores)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_top_p_filter_equals_hf_warper(top_p):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(16, 50)) * rng.uniform(0.5, 4.0, size=(16, 1))).astype(np.float32)
    want = hf_top_p(logits.astype(np.float64), top_p)
    got = np.asarray(top_p_filter(jnp.asarray(logits), top_p))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_array_equal(got[~np.isinf(got)], logits[~np.isinf(want)])


def test_top_p_keeps_the_top_token_and_the_mass_reaching_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]]))
    kept = ~np.isinf(np.asarray(top_p_filter(logits, 0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False], [True, False, False, False]])
    kept = ~np.isinf(np.asarray(top_p_filter(logits, 0.01)))
    assert kept.sum(1).tolist() == [1, 1]


def test_sampling_follows_the_filtered_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    tokens = np.asarray(sample_token(logits, jax.random.key(3), 1.0, 0.9))
    freq = np.bincount(tokens, minlength=4) / len(tokens)
    np.testing.assert_allclose(freq, np.array([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.03)
    assert np.asarray(sample_token(logits[:2], None, 0.0, 0.5)).tolist() == [0, 0]


def test_numpy_reference_is_hf_warper():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopPLogitsWarper
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(8, 40)) * 3).astype(np.float32)
    for top_p in (0.2, 0.6, 0.95):
        want = TopPLogitsWarper(top_p)(None, torch.tensor(logits)).numpy()
        np.testing.assert_array_equal(hf_top_p(logits, top_p), want)
