"""Sanity tests of the NumPy oracle itself (tests/reduction/oracle.py).

Checks: hand-computed Stage-1 examples, the spec's worked numbers (docs/ALGORITHM.md
docs/ALGORITHM.md §2.3, §2.6, §4.1, §4.2, §5), and Stage-2 attention against HF PyTorch's
eager Llama attention (an independent implementation).
"""

import numpy as np
import pytest


from tests.reduction import oracle as ref  # noqa: E402


# ---- Stage 1: hand-computed example (N=8, d=3, H=2) -----------------------
# s = per-patch CLS attention summed over heads; X[pos] = [pos, pos^2].
S_HAND = np.array([0.1, 0.8, 0.3, 0.05, 0.7, 0.2, 0.4, 0.15])
METRIC_BY_PATCH = {0: [1, 0.1], 1: [0.3, 0.3], 2: [0.1, 1], 3: [1, 1],
                   4: [0.5, -1], 5: [0, 1], 6: [1, 0], 7: [2, 0.5]}


def _hand_inputs():
    cls_attn = np.stack([S_HAND / 2, S_HAND / 2])[None]           # [1, 2, 8]
    hidden = np.array([[p, p * p] for p in range(9)], float)[None]  # [1, 9, 2]
    metric = np.zeros((1, 9, 2))
    metric[0, 0] = [5.0, 5.0]
    for p, v in METRIC_BY_PATCH.items():
        metric[0, p + 1] = v
    return cls_attn, hidden, metric


def _x(*positions):
    return np.array([[p, p * p] for p in positions], float)


def test_duet_hand_example():
    # dominant patches 1, 4 -> positions [0, 2, 5]; R = patches [0,2,3,5,6,7];
    # pool (P = 4) = patches 6, 2, 5, 7; step 2 -> anchors patch 6 (pos 7) and
    # patch 5 (pos 6); patch 2 -> patch 5, patch 7 -> patch 6 by cosine.
    tokens, positions, traces = ref.vision_merge(*_hand_inputs(), 3, 2, 2, "duet")
    np.testing.assert_array_equal(positions[0], [0, 2, 5, 7, 6])
    expected = np.concatenate([_x(0, 2, 5), _x(7) + _x(8), _x(6) + _x(3)])
    np.testing.assert_allclose(tokens[0], expected)
    assert (traces[0].num_merged, traces[0].num_dropped) == (2, 2)


def test_duet_hand_example_c0_keeps_one_anchor():
    tokens, positions, _ = ref.vision_merge(*_hand_inputs(), 3, 0, 4, "duet")
    np.testing.assert_array_equal(positions[0], [0, 2, 5, 7])
    np.testing.assert_allclose(tokens[0], np.concatenate([_x(0, 2, 5), _x(7)]))


def test_visionzip_hand_example():
    # M = 6, step 3 -> anchors filtered 0 (patch 0, pos 1), 3 (patch 5, pos 6);
    # patches 3, 6, 7 -> patch 0; patch 2 -> patch 5.
    tokens, positions, traces = ref.vision_merge(*_hand_inputs(), 3, 2, 4, "visionzip")
    np.testing.assert_array_equal(positions[0], [0, 2, 5, 1, 6])
    expected = np.concatenate([_x(0, 2, 5), _x(1) + _x(4, 7, 8).mean(0, keepdims=True),
                               _x(6) + _x(3)])
    np.testing.assert_allclose(tokens[0], expected)
    assert (traces[0].num_merged, traces[0].num_dropped) == (4, 0)


def _paper_inputs():
    # dyadic entries so the ties below are exact in floating point
    abar = np.array([[2, 8, 3, 3], [5, 5, 3, 3], [2, 2, 1, 12], [6, 5, 3, 2]]) / 16
    attn = np.full((1, 1, 5, 5), 0.9)  # CLS row/column must be ignored
    attn[0, 0, 1:, 1:] = abar
    hidden = np.array([[p, p * p] for p in range(5)], float)[None]
    return attn, hidden


@pytest.mark.parametrize("k2, exp_pos, exp_rows", [
    # column sums [15, 20, 10, 20]/16: tie 1 vs 3 -> patch 1 dominant;
    # centroid 3 takes Abar[3, R] top-2 = patches 0, 2.
    (1, [2, 4], [[2, 4], [2, 5]]),
    # second centroid 0: Abar[0, {0,2,3}] = 2,3,3 /16 -> tie -> patches 2, 3.
    (2, [2, 4, 1], [[2, 4], [2, 5], [3.5, 12.5]]),
])
def test_paper_hand_example(k2, exp_pos, exp_rows):
    attn, hidden = _paper_inputs()
    tokens, positions, _ = ref.vision_merge(None, hidden, None, 1, k2, 2, "paper",
                                            attention=attn)
    np.testing.assert_array_equal(positions[0], exp_pos)
    np.testing.assert_allclose(tokens[0], exp_rows)


# ---- Stage 1: worked example and the edge-case table ----------------------


def _random_stage1(n, d_model=6, dm=4, heads=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((1, heads, n)), rng.normal(size=(1, n + 1, d_model)),
            rng.normal(size=(1, n + 1, dm)))


def test_worked_example_llava15_192():
    tokens, positions, traces = ref.vision_merge(*_random_stage1(576), 300, 7, 4, "duet")
    t = traces[0]
    assert tokens.shape[1] == 307 == ref.merge_size(576, 300, 7, 4, "duet")
    assert t.anchor_slots == (0, 4, 8, 12, 16, 20, 24)
    assert (t.num_merged, t.num_dropped) == (21, 249)
    assert len(set(positions[0].tolist())) == 307


@pytest.mark.parametrize("mode, n, d, c, w, exp_c, exp_merged, exp_dropped", [
    ("duet", 20, 5, 0, 4, 1, 0, 15),      # c = 0 still yields one token
    ("duet", 20, 5, 3, 1, 3, 0, 13),      # w = 1: anchors only
    ("duet", 20, 5, 3, 6, 3, 13, 0),      # w*c > M: P = M, step = M // c = 5
    ("duet", 20, 18, 5, 4, 3, 0, 0),      # M = 3 < c: all anchors
    ("visionzip", 20, 18, 5, 4, 3, 0, 0),  # M < c: C = M
    ("visionzip", 20, 5, 3, 4, 3, 13, 0),  # nothing dropped
    ("duet", 20, 1, 2, 2, 2, 2, 16),      # d = 1: CLS only
    ("duet", 20, 20, 2, 4, 1, 0, 0),      # d = N: M = 1
])
def test_edge_case_table(mode, n, d, c, w, exp_c, exp_merged, exp_dropped):
    tokens, positions, traces = ref.vision_merge(*_random_stage1(n), d, c, w, mode)
    assert tokens.shape[1] == d + exp_c == ref.merge_size(n, d, c, w, mode)
    assert (traces[0].num_merged, traces[0].num_dropped) == (exp_merged, exp_dropped)
    assert positions[0, 0] == 0 and list(positions[0, :d]) == sorted(positions[0, :d])


def test_duet_w_times_c_above_m_uses_step_m_over_c():
    _, _, traces = ref.vision_merge(*_random_stage1(20), 5, 3, 6, "duet")
    assert traces[0].anchor_slots == (0, 5, 10)  # P = M = 16, step = 16 // 3


@pytest.mark.parametrize("mode, d, c", [("visionzip", 5, 0), ("duet", 21, 2),
                                        ("duet", 0, 2), ("visionzip", 21, 2)])
def test_stage1_errors(mode, d, c):
    with pytest.raises(ValueError):
        ref.vision_merge(*_random_stage1(20), d, c, 4, mode)


# ---- Budgets (docs/ALGORITHM.md §4.1, §4.2, §5) ----------------------------


@pytest.mark.parametrize("n0, layers, ratios, n_layers, expected", [
    (307, [16, 24], [0.5, 0.0], 32, 191.75),
    (205, [16, 24], [0.5, 0.0], 32, 128.0),
    (102, [16, 24], [0.5, 0.0], 32, 63.75),
    (1025, [16, 24], [0.5, 0.0], 32, 640.5),
    (510, [16, 24], [0.5, 0.0], 32, 318.75),
    (255, [16, 24], [0.5, 0.0], 32, 159.25),
    (1536, [16, 24], [0.5, 0.0], 32, 960.0),
    (216, [16, 24], [0.5, 0.0], 32, 135.0),
    (576, [8, 16, 24], [0.5, 0.25, 0.125], 32, 270.0),  # PyramidDrop
])
def test_average_tokens(n0, layers, ratios, n_layers, expected):
    assert ref.average_tokens(n0, layers, ratios, n_layers) == expected


def test_stage1_budget_presets_give_n0():
    assert [ref.merge_size(576, d, c) for d, c in [(300, 7), (170, 35), (72, 30)]] == [307, 205, 102]
    assert [ref.merge_size(256, d, c) for d, c in [(160, 32), (20, 7)]] == [192, 27]
    assert ref.merge_size(576, 54, 10, mode="visionzip") == 64


def test_schedule_counts_floor():
    assert ref.schedule_counts(307, [0.5, 0.0]) == [307, 153, 0]
    assert ref.schedule_counts(576, [0.5, 0.25, 0.125]) == [576, 288, 144, 72]


@pytest.mark.parametrize("kept, target", [(166, 192), (98, 128), (30, 64)])
def test_fastv_budget(kept, target):
    assert round(ref.fastv_average_tokens(576, 2, kept, 32)) == target


# ---- Stage 2 (docs/ALGORITHM.md §3) ----------------------------------------


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_attention_probs_match_hf_llama_eager(num_heads, num_kv_heads):
    """The oracle's next-layer attention equals HF LlamaAttention (eager) fed
    with that layer's input RMSNorm: RoPE, GQA grouping, scaling, mask."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.models.llama import modeling_llama as hf

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=num_heads,
                      num_key_value_heads=num_kv_heads, head_dim=8,
                      num_hidden_layers=1, intermediate_size=64, vocab_size=16,
                      rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    cfg._attn_implementation = "eager"
    layer = hf.LlamaDecoderLayer(cfg, 0).eval()
    with torch.no_grad():
        layer.input_layernorm.weight.uniform_(0.5, 1.5)
    rotary = hf.LlamaRotaryEmbedding(cfg)
    batch, seq = 2, 7
    hidden = torch.randn(batch, seq, 32)
    valid = torch.tensor([[1] * 7, [1] * 5 + [0] * 2], dtype=torch.bool)
    positions = torch.tensor([list(range(7)), [3, 4, 5, 6, 7, 0, 0]])
    allowed = torch.tril(torch.ones(seq, seq, dtype=torch.bool))[None] & valid[:, None, :]
    additive = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        normed = layer.input_layernorm(hidden)
        _, weights = layer.self_attn(normed, rotary(normed, positions), additive)
    probs_hf = weights.numpy()
    for b in range(batch):
        probs = ref.attention_probs(
            hidden[b].numpy(), layer.input_layernorm.weight.detach().numpy(),
            layer.self_attn.q_proj.weight.detach().numpy().T,
            layer.self_attn.k_proj.weight.detach().numpy().T,
            positions[b].numpy(), valid[b].numpy(), num_heads=num_heads,
            num_kv_heads=num_kv_heads, rms_eps=1e-5, rope_theta=500.0)
        np.testing.assert_allclose(probs, probs_hf[b], atol=2e-6)


def test_scores_are_mean_of_image_columns():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(1, 6, 8))
    wq, wk = rng.normal(size=(8, 8)), rng.normal(size=(8, 4))
    kw = dict(num_heads=2, num_kv_heads=1, rms_eps=1e-6, rope_theta=10000.0)
    pos, valid = np.arange(6)[None], np.ones((1, 6), bool)
    query = np.zeros((1, 6), bool)
    query[0, [4, 5]] = True
    scores = ref.text_image_scores(hidden, np.ones(8), wq, wk, pos, valid, query,
                                   [1], num_image=3, **kw)
    probs = ref.attention_probs(hidden[0], np.ones(8), wq, wk, pos[0], valid[0], **kw)
    np.testing.assert_allclose(scores[0], probs[:, [4, 5], 1:4].mean(axis=(0, 1)))


def test_keep_top_is_ascending_with_ties_to_lowest():
    scores = np.array([[0.2, 0.5, 0.2, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3, 0.3]])
    np.testing.assert_array_equal(ref.keep_top_image_tokens(scores, 3),
                                  [[0, 1, 3], [0, 1, 2]])


def test_query_masks_hand_example():
    # sample 0: 8 valid rows, image at 1..3; sample 1: 6 valid, image at 2..4.
    mask = np.array([[1] * 8, [1] * 6 + [0] * 2])
    labels = np.full((2, 8), -100)
    labels[0, 6:8] = 5
    labels[1, 5] = 7
    start = [1, 2]
    np.testing.assert_array_equal(ref.official_query_mask(start, 3, 8).astype(int),
                                  [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(ref.eval_all_query_mask(mask, start, 3).astype(int),
                                  [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(ref.train_all_query_mask(mask, labels, start, 3).astype(int),
                                  [[0, 0, 0, 0, 1, 1, 0, 0], [0] * 8])
    np.testing.assert_array_equal(np.argwhere(ref.eval_last_query_mask(mask)), [[0, 7], [1, 5]])
    np.testing.assert_array_equal(np.argwhere(ref.train_last_query_mask(mask, labels)),
                                  [[0, 5], [1, 4]])


def test_drop_and_rebuild_matches_static_gather_map():
    """docs/ALGORITHM.md §3.4 list form == §3.6 gather formula, padding and renumbering."""
    rng = np.random.default_rng(2)
    batch, seq, dim, n_prev, n_new = 3, 12, 4, 5, 2
    hidden = rng.normal(size=(batch, seq, dim))
    labels = rng.integers(0, 9, size=(batch, seq))
    lens, starts = [12, 10, 9], [2, 1, -1]
    mask = np.arange(seq)[None] < np.array(lens)[:, None]
    keep = np.array([[0, 3], [1, 4], [0, 1]])
    out_h, out_l, out_m, out_p = ref.drop_and_rebuild(hidden, labels, mask, starts,
                                                      keep, n_prev)
    new_lens = [12 - 3, 10 - 3, 9]
    assert out_h.shape == (batch, max(new_lens), dim)
    for b in range(batch):
        for j in range(out_h.shape[1]):
            valid = j < new_lens[b]
            p_b = starts[b]
            if p_b < 0 or j < p_b:
                src = j
            elif j < p_b + n_new:
                src = p_b + keep[b, j - p_b]
            else:
                src = j + (n_prev - n_new)
            assert out_m[b, j] == valid and out_p[b, j] == (j if valid else 0)
            if valid:
                np.testing.assert_array_equal(out_h[b, j], hidden[b, src])
                assert out_l[b, j] == labels[b, src]
            else:
                assert out_l[b, j] == -100 and not out_h[b, j].any()
