"""Property tests of Stage 1 (vision_merge), docs/ALGORITHM.md §2.

Every check recomputes the expected selection or merge from the returned
assignment and the raw inputs with NumPy, or compares two runs that the spec
says must agree.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.reduction import vision_merge, vision_merge_size

N, D, DM, H = 16, 6, 5, 3          # 4x4 patches, tiny widths
CASES = [  # (mode, dominant, contextual, width)
    ("duet", 5, 3, 2), ("duet", 4, 2, 4), ("duet", 5, 0, 4), ("duet", 14, 9, 4),
    ("duet", 3, 4, 1), ("visionzip", 5, 3, 4), ("visionzip", 14, 9, 4),
    ("paper", 5, 3, 2), ("paper", 15, 4, 3),
]


def make_inputs(seed, batch=2, n=N, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, H, n + 1, n + 1))
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    hidden = rng.normal(size=(batch, n + 1, D))
    metric = rng.normal(size=(batch, n + 1, DM))
    return (jnp.asarray(attn[:, :, 0, 1:], jnp.float32), jnp.asarray(hidden, dtype),
            jnp.asarray(metric, jnp.float32), jnp.asarray(attn, jnp.float32))


# One jitted function for the whole file: a compile per (shape, config) is far
# cheaper than op-by-op dispatch.
_merge_jit = jax.jit(vision_merge, static_argnames=("dominant", "contextual", "width", "mode"))


def merge(inputs, mode, d, c, w):
    cls_attn, hidden, metric, attn = inputs
    return _merge_jit(cls_attn, hidden, metric, dominant=d, contextual=c, width=w, mode=mode,
                      attn=attn if mode == "paper" else None)


def num_contextual(mode, d, c, w, n=N):
    return vision_merge_size(n, d, c, w, mode) - d


@pytest.mark.parametrize("mode,d,c,w", CASES)
def test_static_shapes_and_exact_counts_under_jit(mode, d, c, w):
    out = merge(make_inputs(0), mode, d, c, w)   # merge() runs under jax.jit
    k = vision_merge_size(N, d, c, w, mode)
    chex.assert_shape(out.tokens, (2, k, D))
    chex.assert_shape(out.positions, (2, k))
    assert out.positions.dtype == jnp.int32 and out.member_positions.dtype == jnp.int32
    pos = np.asarray(out.positions)
    for b in range(2):
        assert len(set(pos[b])) == k, "every output row comes from a distinct token"
        dom = pos[b, :d]
        assert np.all(np.diff(dom) > 0), "dominant rows in ascending position order"
        if mode != "paper":
            assert dom[0] == 0, "CLS is always the first dominant row"
        assert np.all(pos[b] >= 0) and np.all(pos[b] <= N)


@pytest.mark.parametrize("mode,d,c,w", [CASES[0], CASES[5], CASES[7]])
def test_no_retrace_across_inputs_of_one_shape(mode, d, c, w):
    traces = []

    @jax.jit
    def fn(*a):
        traces.append(1)
        return merge(a, mode, d, c, w)

    for seed in range(3):
        jax.block_until_ready(fn(*make_inputs(seed)))
    assert len(traces) == 1


@pytest.mark.parametrize("mode,d,c,w", [CASES[0], CASES[3], CASES[5], CASES[7]])
def test_batch_and_vmap_equal_per_sample(mode, d, c, w):
    inputs = make_inputs(1, batch=3)
    batched = merge(inputs, mode, d, c, w)
    for b in range(3):
        single = merge(tuple(x[b:b + 1] for x in inputs), mode, d, c, w)
        for got, want in zip(batched, single):
            np.testing.assert_array_equal(np.asarray(got[b:b + 1]), np.asarray(want))
    # crops axis in front, as a multi-crop caller would vmap
    crops = tuple(jnp.stack([x, x[::-1]]) for x in inputs)
    mapped = jax.vmap(lambda *a: merge(a, mode, d, c, w))(*crops)
    np.testing.assert_allclose(np.asarray(mapped.tokens[1]), np.asarray(batched.tokens[::-1]),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode,d,c,w", [x for x in CASES if x[0] != "paper"])
def test_selection_matches_scores(mode, d, c, w):
    inputs = make_inputs(2)
    out = merge(inputs, mode, d, c, w)
    scores = np.asarray(inputs[0]).sum(1)
    m = N - (d - 1)
    n_ctx = num_contextual(mode, d, c, w)
    for b in range(2):
        order = np.argsort(-scores[b], kind="stable")
        dominant = np.sort(order[:d - 1]) + 1
        np.testing.assert_array_equal(np.asarray(out.positions[b, 1:d]), dominant)
        anchors = np.asarray(out.positions[b, d:])
        members = np.asarray(out.member_positions[b])
        nondominant = np.sort(order[d - 1:]) + 1
        assert set(anchors) | set(members) <= set(nondominant)
        assert not set(anchors) & set(members)
        if mode == "duet":
            pool = min(max(1, w * c), m)
            # the pool is the top-P non-dominant patches; anchors keep descending-score order
            assert set(anchors) | set(members) == set(order[d - 1:d - 1 + pool] + 1)
            assert np.all(np.diff(scores[b, anchors - 1]) < 0)
            assert len(members) == pool - n_ctx
        else:
            # visionzip: nothing dropped, anchors spread over position order
            assert set(anchors) | set(members) == set(nondominant)
            step = max(1, m // c)
            np.testing.assert_array_equal(anchors, nondominant[::step][:n_ctx])


@pytest.mark.parametrize("mode,d,c,w", CASES)
def test_contextual_rows_conserve_mass(mode, d, c, w):
    inputs = make_inputs(3)
    out = merge(inputs, mode, d, c, w)
    hidden = np.asarray(inputs[1], np.float64)
    n_ctx = num_contextual(mode, d, c, w)
    unit = np.asarray(inputs[2], np.float64)
    unit = unit / np.linalg.norm(unit, axis=-1, keepdims=True)
    for b in range(2):
        pos, members = np.asarray(out.positions[b]), np.asarray(out.member_positions[b])
        owner = np.asarray(out.member_anchor[b])
        np.testing.assert_allclose(np.asarray(out.tokens[b, :d]), hidden[b, pos[:d]], atol=1e-6)
        for j in range(n_ctx):
            group = hidden[b, members[owner == j]]
            if mode == "paper":
                want = group.mean(0)
            else:
                want = hidden[b, pos[d + j]] + (group.mean(0) if len(group) else 0.0)
            np.testing.assert_allclose(np.asarray(out.tokens[b, d + j]), want, atol=1e-5)
        if mode != "paper" and len(members):
            # hard assignment = most cosine-similar anchor (docs/ALGORITHM.md §2.3 step 8)
            sim = unit[b, members] @ unit[b, pos[d:]].T
            np.testing.assert_array_equal(owner, np.argmax(sim, axis=-1))


@pytest.mark.parametrize("mode", ["duet", "visionzip", "paper"])
def test_patch_permutation(mode):
    # The spec selects by score only; positions matter just for the output
    # order (dominant rows ascending) and, in visionzip, for where anchors sit
    # (uniform over position order). So permuting patches with their scores,
    # keys and attention maps the dominant set through the permutation; in
    # duet and paper the contextual rows (score-ordered) are unchanged.
    d, c, w = 5, 3, 2
    cls_attn, hidden, metric, attn = make_inputs(4)
    perm = np.random.default_rng(0).permutation(N)
    full = np.concatenate([[0], perm + 1])
    permuted = (cls_attn[:, :, perm], hidden[:, full], metric[:, full],
                attn[:, :, full][:, :, :, full])
    base = merge((cls_attn, hidden, metric, attn), mode, d, c, w)
    moved = merge(permuted, mode, d, c, w)
    original_of = full   # new position -> original position
    for b in range(2):
        assert (set(original_of[np.asarray(moved.positions[b, :d])])
                == set(np.asarray(base.positions[b, :d])))
    if mode != "visionzip":
        np.testing.assert_allclose(np.asarray(moved.tokens[:, d:]), np.asarray(base.tokens[:, d:]),
                                   atol=1e-6)
        np.testing.assert_array_equal(original_of[np.asarray(moved.positions[:, d:])],
                                      np.asarray(base.positions[:, d:]))


@pytest.mark.parametrize("mode,d,c,w", [CASES[0], CASES[2], CASES[5], CASES[8]])
def test_gradient_reaches_exactly_the_merged_rows(mode, d, c, w):
    cls_attn, hidden, metric, attn = make_inputs(5)
    out = merge((cls_attn, hidden, metric, attn), mode, d, c, w)
    cotangent = jax.random.normal(jax.random.PRNGKey(0), out.tokens.shape)
    grad = jax.jit(jax.grad(lambda h: jnp.sum(
        merge((cls_attn, h, metric, attn), mode, d, c, w).tokens * cotangent)))(hidden)
    # expected gradient from the returned assignment: tokens are linear in hidden
    want = np.zeros(hidden.shape)
    cot = np.asarray(cotangent, np.float64)
    n_ctx = num_contextual(mode, d, c, w)
    for b in range(2):
        pos, members = np.asarray(out.positions[b]), np.asarray(out.member_positions[b])
        owner = np.asarray(out.member_anchor[b])
        for r in range(d):
            want[b, pos[r]] += cot[b, r]
        for j in range(n_ctx):
            if mode != "paper":
                want[b, pos[d + j]] += cot[b, d + j]
            group = members[owner == j]
            for p in group:
                want[b, p] += cot[b, d + j] / len(group)
    np.testing.assert_allclose(np.asarray(grad), want, atol=1e-5)
    touched = np.abs(want).sum(-1) > 0
    assert np.all((np.abs(np.asarray(grad)).sum(-1) > 0) == touched)


def test_edge_cases_of_section_2_6():
    inputs = make_inputs(6)
    scores = np.asarray(inputs[0]).sum(1)
    # duet c=0: one contextual token, the top-scoring non-dominant patch alone
    out = merge(inputs, "duet", 5, 0, 4)
    assert out.tokens.shape[1] == 6 and out.member_positions.shape[1] == 0
    for b in range(2):
        top = np.argsort(-scores[b], kind="stable")[4] + 1
        assert int(out.positions[b, 5]) == top
        np.testing.assert_allclose(np.asarray(out.tokens[b, 5]), np.asarray(inputs[1][b, top]))
    # visionzip M < c: every non-dominant token is an anchor, nothing merges
    out = merge(inputs, "visionzip", 14, 9, 4)
    assert out.tokens.shape[1] == 14 + 3 and out.member_positions.shape[1] == 0
    # duet w*c > M: pool clipped to M, C = min(c, M)
    assert vision_merge_size(N, 12, 4, 4, "duet") == 12 + 4
    # the LLaVA-1.5 worked example: d=300, c=7, w=4 -> 21 merged, K=307
    big = make_inputs(7, batch=1, n=576)
    out = merge(big, "duet", 300, 7, 4)
    assert out.tokens.shape == (1, 307, D) and out.member_positions.shape == (1, 21)
    assert vision_merge_size(576, 300, 7, 4, "duet") == 307


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="visionzip", dominant=5, contextual=0), "contextual >= 1"),
    (dict(mode="duet", dominant=N + 1, contextual=2), "dominant"),
    (dict(mode="duet", dominant=0, contextual=2), "dominant"),
    (dict(mode="paper", dominant=3, contextual=2), "attn"),
    (dict(mode="fast", dominant=3, contextual=2), "mode"),
    (dict(mode="duet", dominant=3, contextual=2, width=0), "width"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    cls_attn, hidden, metric, _ = make_inputs(8)
    with pytest.raises(ValueError, match=match):
        vision_merge(cls_attn, hidden, metric, **kwargs)


def test_shape_mismatch_is_reported():
    cls_attn, hidden, metric, _ = make_inputs(8)
    with pytest.raises(ValueError, match="cls_attn"):
        vision_merge(cls_attn[:, :, 1:], hidden, metric, dominant=3, contextual=2)
    with pytest.raises(ValueError, match="metric"):
        vision_merge(cls_attn, hidden, metric[:, 1:], dominant=3, contextual=2)


def test_ties_go_to_the_lowest_index():
    cls_attn, hidden, metric, _ = make_inputs(9)
    flat = jnp.ones_like(cls_attn) / N
    out = vision_merge(flat, hidden, jnp.ones_like(metric), dominant=4, contextual=2, width=2)
    np.testing.assert_array_equal(np.asarray(out.positions[0]), [0, 1, 2, 3, 4, 6])
    # equal keys: every member goes to anchor slot 0
    assert np.all(np.asarray(out.member_anchor) == 0)


def test_low_precision_dtype_is_kept():
    inputs = make_inputs(10, dtype=jnp.bfloat16)
    for mode, d, c, w in (CASES[0], CASES[5], CASES[7]):
        out = merge(inputs, mode, d, c, w)
        assert out.tokens.dtype == jnp.bfloat16
        ref = merge((inputs[0], inputs[1].astype(jnp.float32), inputs[2], inputs[3]), mode, d, c, w)
        np.testing.assert_array_equal(np.asarray(out.positions), np.asarray(ref.positions))
        np.testing.assert_allclose(np.asarray(out.tokens, np.float32), np.asarray(ref.tokens),
                                   atol=3e-2, rtol=2e-2)
