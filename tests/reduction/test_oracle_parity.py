"""Parity of duet_jax.reduction (public API, docs/API.md §1-2) with the NumPy oracle.

Selected indices/positions must match exactly; values to 1e-5 in float32.
Random inputs are drawn tie-free (draws whose decisive score or cosine gaps
are below float32 resolution are redrawn); dedicated cases use exactly
representable (dyadic) values to force ties, which must go to the lowest
index (docs/ALGORITHM.md §2.8).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.reduction import (keep_top_image_tokens, official_query_mask,
                                text_image_scores, vision_merge, vision_merge_size)


from tests.reduction import oracle as ref  # noqa: E402
ATOL = 1e-5
GAP = 1e-5  # minimum decisive (relative) gap of a "tie-free" draw; float32 noise ~1e-7
PAPER_ATTN_KW = "attn"  # keyword vision_merge takes the full [B,H,T,T] map by


# ---- Stage 1 helpers -------------------------------------------------------


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _draw_stage1(seed, batch, n, heads=2, d_model=6, dm=4):
    rng = np.random.default_rng(seed)
    attn = _softmax(2.0 * rng.normal(size=(batch, heads, n + 1, n + 1))).astype(np.float32)
    hidden = rng.normal(size=(batch, n + 1, d_model)).astype(np.float32)
    metric = rng.normal(size=(batch, n + 1, dm)).astype(np.float32)
    return attn, hidden, metric


def _min_sorted_gap(values):
    v = np.sort(np.asarray(values, np.float64))
    return np.min(np.diff(v)) if v.size > 1 else np.inf


def _decisive_gaps(scores, lo, hi):
    """Relative gaps (v[i] - v[i+1]) / v[i] of the descending scores for i in
    [lo, hi); float32 sums of a few probabilities are exact to ~1e-7 relative."""
    v = np.sort(np.asarray(scores, np.float64))[::-1]
    return [(v[i] - v[i + 1]) / max(v[i], 1e-30)
            for i in range(max(lo, 0), min(hi, v.size - 1))]


def _tie_free(attn, mode, d, c, w):
    """Every score comparison the selection depends on is decided by > GAP:
    the dominant cut and, for duet/paper, the order of the next pool/centroid
    slots (only sets matter elsewhere). Cosine and neighbour cuts are checked
    on the oracle trace."""
    a = attn.astype(np.float64)
    n = a.shape[-1] - 1
    for b in range(a.shape[0]):
        if mode == "paper":
            s, cut, extra = a[b, :, 1:, 1:].mean(0).sum(0), d, min(c, n - d)
        else:
            s, cut = a[b, :, 0, 1:].sum(0), d - 1
            extra = min(max(1, w * c), n - cut) if mode == "duet" else 0
        gaps = _decisive_gaps(s, cut - 1, cut + extra)
        if gaps and min(gaps) <= GAP:
            return False
    return True


def _tie_free_inputs(seed, batch, n, mode, d, c, w):
    for attempt in range(50):
        attn, hidden, metric = _draw_stage1(seed + 7919 * attempt, batch, n)
        if not _tie_free(attn, mode, d, c, w):
            continue
        out = _oracle(attn, hidden, metric, d, c, w, mode)
        if all(t.assign_margin > GAP for t in out[2]):
            return (attn, hidden, metric), out
    raise AssertionError("could not draw tie-free inputs")


def _oracle(attn, hidden, metric, d, c, w, mode):
    if mode == "paper":
        return ref.vision_merge(None, hidden, None, d, c, w, mode, attention=attn)
    return ref.vision_merge(attn[:, :, 0, 1:], hidden, metric, d, c, w, mode)


@functools.lru_cache(maxsize=None)
def _jitted_merge(d, c, w, mode):
    if mode == "paper":
        return jax.jit(lambda cls, hid, met, attn: vision_merge(
            cls, hid, met, dominant=d, contextual=c, width=w, mode=mode,
            **{PAPER_ATTN_KW: attn}))
    return jax.jit(lambda cls, hid, met, attn: vision_merge(
        cls, hid, met, dominant=d, contextual=c, width=w, mode=mode))


def _jax_merge(attn, hidden, metric, d, c, w, mode):
    out = _jitted_merge(d, c, w, mode)(jnp.asarray(attn[:, :, 0, 1:]), jnp.asarray(hidden),
                                       jnp.asarray(metric), jnp.asarray(attn))
    return np.asarray(out.tokens), np.asarray(out.positions)


def _assert_merge_parity(inputs, expected, n, d, c, w, mode):
    tokens, positions = _jax_merge(*inputs, d, c, w, mode)
    exp_tokens, exp_positions, _ = expected
    k = ref.merge_size(n, d, c, w, mode)
    assert vision_merge_size(n, d, c, w, mode) == k == exp_tokens.shape[1]
    assert tokens.shape == exp_tokens.shape and positions.shape == exp_positions.shape
    assert positions.dtype == np.int32  # docs/API.md §1
    np.testing.assert_array_equal(positions, exp_positions)
    np.testing.assert_allclose(tokens, exp_tokens, atol=ATOL, rtol=ATOL)


# ---- Stage 1: random tie-free shapes ----------------------------------------

RANDOM_CASES = [  # mode, batch, N, d, c, w
    ("duet", 1, 16, 4, 2, 4), ("duet", 2, 36, 10, 3, 4), ("duet", 3, 48, 20, 5, 2),
    ("duet", 2, 48, 7, 4, 3), ("duet", 2, 36, 30, 2, 2), ("duet", 1, 49, 25, 6, 5),
    ("visionzip", 1, 16, 4, 2, 4), ("visionzip", 2, 36, 10, 3, 4),
    ("visionzip", 3, 48, 20, 5, 4), ("visionzip", 2, 49, 13, 7, 4),
    ("paper", 1, 16, 4, 2, 4), ("paper", 2, 24, 8, 3, 3), ("paper", 2, 25, 5, 4, 2),
]


@pytest.mark.parametrize("mode, batch, n, d, c, w", RANDOM_CASES)
def test_vision_merge_random(mode, batch, n, d, c, w):
    for seed in range(3):
        inputs, expected = _tie_free_inputs(seed, batch, n, mode, d, c, w)
        _assert_merge_parity(inputs, expected, n, d, c, w, mode)


# ---- Stage 1: the edge-case table of docs/ALGORITHM.md §2.6 ----------------

EDGE_CASES = [  # mode, N, d, c, w, expected K
    ("duet", 20, 5, 0, 4, 6),        # c = 0 still yields one contextual token
    ("duet", 20, 5, 3, 1, 8),        # w = 1: P = c, anchors only
    ("duet", 20, 5, 3, 6, 8),        # w*c > M: P = M, step = M // c
    ("duet", 20, 18, 5, 4, 21),      # M = 3 < c: every pooled token is an anchor
    ("visionzip", 20, 18, 5, 4, 21),  # M < c: C = M, nothing merged
    ("duet", 20, 1, 3, 4, 4),        # d = 1: CLS only
    ("visionzip", 20, 1, 3, 4, 4),
    ("duet", 20, 20, 2, 4, 21),      # d = N: M = 1
    ("paper", 20, 19, 3, 4, 20),     # k2 clipped to N - k1
    ("paper", 20, 6, 3, 30, 9),      # w clipped to |R|
    ("paper", 20, 20, 3, 4, 20),     # no residual tokens at all
    ("paper", 20, 6, 0, 4, 6),       # no contextual tokens
]


@pytest.mark.parametrize("mode, n, d, c, w, k", EDGE_CASES)
def test_vision_merge_edge_cases(mode, n, d, c, w, k):
    inputs, expected = _tie_free_inputs(11, 2, n, mode, d, c, w)
    assert expected[0].shape[1] == k
    _assert_merge_parity(inputs, expected, n, d, c, w, mode)


@pytest.mark.parametrize("mode, d, c, w", [
    ("visionzip", 5, 0, 4),  # docs/ALGORITHM.md §2.6: the official code divides by c
    ("duet", 21, 2, 4), ("visionzip", 21, 2, 4), ("paper", 21, 2, 4),  # d > N
    ("duet", 0, 2, 4), ("duet", 5, 2, 0)])
def test_vision_merge_bad_arguments_raise(mode, d, c, w):
    attn, hidden, metric = _draw_stage1(0, 1, 20)
    with pytest.raises(ValueError) as info:
        vision_merge(jnp.asarray(attn[:, :, 0, 1:]), jnp.asarray(hidden),
                     jnp.asarray(metric), dominant=d, contextual=c, width=w, mode=mode,
                     **({PAPER_ATTN_KW: jnp.asarray(attn)} if mode == "paper" else {}))
    assert "\n" not in str(info.value).strip()
    with pytest.raises(ValueError):
        vision_merge_size(20, d, c, w, mode)
    with pytest.raises(ValueError):
        ref.merge_size(20, d, c, w, mode)


def test_worked_example_llava15_192():
    """docs/ALGORITHM.md §2.3: d=300, c=7, w=4 on N=576 -> K=307, 21 merged, 249 dropped."""
    inputs, expected = _tie_free_inputs(5, 1, 576, "duet", 300, 7, 4)
    trace = expected[2][0]
    assert (trace.num_merged, trace.num_dropped) == (21, 249)
    _assert_merge_parity(inputs, expected, 576, 300, 7, 4, "duet")


def test_batch_selections_differ_per_sample():
    inputs, expected = _tie_free_inputs(3, 3, 36, "duet", 10, 3, 4)
    positions = expected[1]
    assert len({tuple(p) for p in positions.tolist()}) == 3
    _assert_merge_parity(inputs, expected, 36, 10, 3, 4, "duet")


# ---- Stage 1: exact ties go to the lowest index ------------------------------


def _dyadic_inputs(seed, batch, n, levels, metric_kind):
    rng = np.random.default_rng(seed)
    heads = 2
    attn = (rng.integers(0, levels, size=(batch, heads, n + 1, n + 1)) / 64).astype(np.float32)
    hidden = rng.normal(size=(batch, n + 1, 5)).astype(np.float32)
    if metric_kind == "constant":  # every cosine equal -> all members to anchor 0
        metric = np.ones((batch, n + 1, 4), np.float32)
    elif metric_kind == "two_directions":  # anchors sharing a direction tie
        dirs = np.array([[1, 2, 0, -1], [0, -1, 3, 1]], np.float32)
        metric = dirs[rng.integers(0, 2, size=(batch, n + 1))]
    else:
        metric = rng.normal(size=(batch, n + 1, 4)).astype(np.float32)
    return attn, hidden, metric


TIE_CASES = [  # mode, N, d, c, w, score levels, metric kind
    ("duet", 24, 6, 3, 4, 1, "constant"),         # all scores equal
    ("duet", 24, 6, 3, 4, 3, "two_directions"),   # score ties at the top-k cut
    ("duet", 36, 9, 4, 3, 2, "random"),
    ("visionzip", 24, 6, 3, 4, 1, "constant"),
    ("visionzip", 24, 6, 4, 4, 3, "two_directions"),
    ("paper", 24, 6, 3, 4, 2, "random"),          # column-sum and row ties
    ("paper", 16, 4, 2, 3, 1, "random"),          # everything tied
]


@pytest.mark.parametrize("mode, n, d, c, w, levels, metric_kind", TIE_CASES)
def test_vision_merge_ties_to_lowest_index(mode, n, d, c, w, levels, metric_kind):
    inputs = _dyadic_inputs(1, 2, n, levels, metric_kind)
    if levels == 1:  # all-zero map is still a valid "probability" tie
        inputs = (inputs[0] + np.float32(1 / 64),) + inputs[1:]
    expected = _oracle(*inputs, d, c, w, mode)
    if metric_kind == "random" and mode != "paper":  # only the scores may tie
        assert all(t.assign_margin > GAP for t in expected[2])
    _assert_merge_parity(inputs, expected, n, d, c, w, mode)
    if levels == 1 and mode != "paper":  # fully tied: lowest patches are dominant
        np.testing.assert_array_equal(expected[1][:, :d], np.tile(np.arange(d), (2, 1)))


# ---- Stage 2 (docs/ALGORITHM.md §3.2-3.3, §3.8) ----------------------------

ROPE_THETA, RMS_EPS = 10000.0, 1e-6


def _draw_stage2(seed, lengths, seq, heads, kv_heads, hd=4, dim=16, gappy=False):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(len(lengths), seq, dim)).astype(np.float32)
    norm_scale = rng.uniform(0.5, 1.5, size=dim).astype(np.float32)
    wq = (0.5 * rng.normal(size=(dim, heads * hd))).astype(np.float32)
    wk = (0.5 * rng.normal(size=(dim, kv_heads * hd))).astype(np.float32)
    mask = np.arange(seq)[None] < np.array(lengths)[:, None]
    if gappy:  # kept-position policy (docs/ALGORITHM.md §3.7): strictly increasing ids with holes
        steps = rng.integers(1, 4, size=(len(lengths), seq))
        positions = np.where(mask, np.cumsum(steps, 1) - steps[:, :1], 0)
    else:
        positions = np.where(mask, np.arange(seq)[None], 0)
    return hidden, norm_scale, wq, wk, positions.astype(np.int32), mask


@functools.lru_cache(maxsize=None)
def _jitted_scores(num_image, heads, kv_heads, query_rows=None):
    return jax.jit(functools.partial(
        text_image_scores, num_image=num_image, num_heads=heads, num_kv_heads=kv_heads,
        rms_eps=RMS_EPS, rope_theta=ROPE_THETA, query_rows=query_rows))


def _oracle_scores(arrays, query_mask, starts, num_image, heads, kv_heads):
    return ref.text_image_scores(*arrays, query_mask, starts, num_image=num_image,
                                 num_heads=heads, num_kv_heads=kv_heads,
                                 rms_eps=RMS_EPS, rope_theta=ROPE_THETA)


def _jax_scores(arrays, query_mask, starts, num_image, heads, kv_heads, query_rows=None):
    fn = _jitted_scores(num_image, heads, kv_heads, query_rows)
    return np.asarray(fn(*(jnp.asarray(a) for a in arrays), jnp.asarray(query_mask),
                         jnp.asarray(np.array(starts, np.int32))))


def _scores_both(arrays, query_mask, starts, num_image, heads, kv_heads):
    args = (arrays, query_mask, starts, num_image, heads, kv_heads)
    return _jax_scores(*args), _oracle_scores(*args)


STAGE2_CASES = [  # lengths, seq, H, KV, image starts, num_image, queries, gappy
    ([14, 10], 14, 4, 4, [2, 3], 5, "default", False),   # MHA, padding
    ([14, 10], 14, 4, 2, [2, 3], 5, "default", False),   # GQA
    ([12, 12, 9], 12, 4, 1, [1, 0, 2], 4, "default", True),  # MQA, kept ids
    ([14, 10], 14, 4, 2, [2, 3], 5, "official", False),  # padding rows as queries
    ([14, 10], 14, 4, 2, [2, 3], 5, "last", False),
    ([140, 131], 140, 2, 1, [3, 5], 6, "default", False),  # > one query block
]


@pytest.mark.parametrize("lengths, seq, heads, kv, starts, n_img, queries, gappy",
                         STAGE2_CASES)
def test_text_image_scores_and_keep(lengths, seq, heads, kv, starts, n_img, queries, gappy):
    for attempt in range(20):
        arrays = _draw_stage2(attempt, lengths, seq, heads, kv, gappy=gappy)
        mask = arrays[5]
        if queries == "official":
            query = np.asarray(official_query_mask(jnp.asarray(mask), jnp.asarray(starts), n_img))
            np.testing.assert_array_equal(query, ref.official_query_mask(starts, n_img, seq))
        elif queries == "last":
            query = ref.eval_last_query_mask(mask)
        else:
            query = ref.eval_all_query_mask(mask, starts, n_img)
        want = _oracle_scores(arrays, query, starts, n_img, heads, kv)
        if all(_min_sorted_gap(row) > GAP for row in want):
            break
    else:
        raise AssertionError("could not draw tie-free scores")
    got = _jax_scores(arrays, query, starts, n_img, heads, kv)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=ATOL)
    # scoring only the window from the last image row on (what the model does)
    windowed = _jax_scores(arrays, query, starts, n_img, heads, kv, query_rows=seq - n_img + 1)
    np.testing.assert_allclose(windowed, want, atol=ATOL, rtol=ATOL)
    for k in (1, n_img // 2, n_img):
        np.testing.assert_array_equal(np.asarray(keep_top_image_tokens(jnp.asarray(got), k)),
                                      ref.keep_top_image_tokens(want, k))


def test_official_query_mask_quirk_vs_default():
    """docs/ALGORITHM.md §6 D6: with right padding the official set also averages the padding rows;
    on an unpadded sample both sets (and scores) coincide."""
    lengths, seq, starts, n_img = [12, 8], 12, [1, 2], 4
    arrays = _draw_stage2(3, lengths, seq, 4, 2)
    mask = arrays[5]
    official = np.asarray(official_query_mask(jnp.asarray(mask), jnp.asarray(starts), n_img))
    default = ref.eval_all_query_mask(mask, starts, n_img)
    np.testing.assert_array_equal(official, ref.official_query_mask(starts, n_img, seq))
    np.testing.assert_array_equal(official[0], default[0])
    assert official[1, 8:].all() and not default[1, 8:].any()
    got_off, want_off = _scores_both(arrays, official, starts, n_img, 4, 2)
    got_def, want_def = _scores_both(arrays, default, starts, n_img, 4, 2)
    np.testing.assert_allclose(got_off, want_off, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(got_def, want_def, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(got_off[0], got_def[0], atol=ATOL)
    assert np.abs(got_off[1] - got_def[1]).max() > 1e-3


def test_official_query_mask_no_image_sample_is_empty():
    mask = np.ones((2, 9), bool)
    got = np.asarray(official_query_mask(jnp.asarray(mask), jnp.asarray([-1, 2]), 3))
    np.testing.assert_array_equal(got, ref.official_query_mask([-1, 2], 3, 9))
    assert not got[0].any()


def test_keep_top_ties_to_lowest_index():
    scores = np.array([[0.25, 0.5, 0.25, 0.5, 0.125, 0.25],
                       [0.125] * 6,
                       [0.5, 0.25, 0.25, 0.25, 0.25, 0.5]], np.float32)
    for k in (0, 1, 3, 6):
        got = np.asarray(keep_top_image_tokens(jnp.asarray(scores), k))
        assert got.shape == (3, k)
        np.testing.assert_array_equal(got, ref.keep_top_image_tokens(scores, k))
    np.testing.assert_array_equal(np.asarray(keep_top_image_tokens(jnp.asarray(scores), 3)),
                                  [[0, 1, 3], [0, 1, 2], [0, 1, 5]])
