"""Property tests of Stage 2 (docs/ALGORITHM.md §3): scores, keep, query sets, drop.

References: the eager attention probabilities of a tiny random HF PyTorch
Llama (RMSNorm, RoPE incl. scaling, GQA, causal + padding mask all at once),
explicit KV-head repetition, per-sample runs, and hand-built gather maps.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.reduction import (apply_drop, drop_gather_index, eval_query_mask, fastv_scores,
                                keep_top_image_tokens, official_query_mask, reduced_lengths,
                                segment_length, text_image_scores, train_query_mask)

B, L, D, HEADS, KV, HD, N_IMG = 2, 14, 16, 4, 2, 4, 6
EPS, THETA = 1e-5, 10000.0
STATIC = ("num_image", "num_heads", "num_kv_heads", "rms_eps", "rope_theta",
          "rope_attention_scaling", "query_block")
_scores_jit = jax.jit(text_image_scores, static_argnames=STATIC)


def make_inputs(seed, heads=HEADS, kv=KV):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    norm = jnp.asarray(1 + 0.1 * rng.normal(size=D), jnp.float32)
    wq = jnp.asarray(rng.normal(size=(D, heads * HD)) * 0.5, jnp.float32)
    wk = jnp.asarray(rng.normal(size=(D, kv * HD)) * 0.5, jnp.float32)
    lengths = np.array([L, L - 3])
    mask = jnp.asarray(np.arange(L)[None] < lengths[:, None])
    positions = jnp.where(mask, jnp.arange(L)[None], 0)
    image_start = jnp.array([2, 3])
    return hidden, norm, wq, wk, positions, mask, image_start


def scores(inputs, query_mask, heads=HEADS, kv=KV, **kw):
    hidden, norm, wq, wk, positions, mask, image_start = inputs
    return _scores_jit(hidden, norm, wq, wk, positions, mask, query_mask, image_start,
                       num_image=N_IMG, num_heads=heads, num_kv_heads=kv, rms_eps=EPS,
                       rope_theta=THETA, **kw)


def test_scores_match_hf_llama_eager_attention():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaModel
    config = LlamaConfig(vocab_size=8, hidden_size=D, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=HEADS, num_key_value_heads=KV, rms_norm_eps=EPS,
                         max_position_embeddings=32, attn_implementation="eager",
                         rope_parameters={"rope_type": "yarn", "rope_theta": THETA,
                                          "factor": 2.0, "original_max_position_embeddings": 16})
    torch.manual_seed(0)
    model = LlamaModel(config).eval()
    inputs = make_inputs(0)
    mask = np.asarray(inputs[5])
    with torch.no_grad():
        out = model(inputs_embeds=torch.tensor(np.asarray(inputs[0])),
                    attention_mask=torch.tensor(mask.astype(np.int64)),
                    output_attentions=True, output_hidden_states=True)
    rotary = model.rotary_emb
    query_mask, _ = eval_query_mask(inputs[5], inputs[6], N_IMG, queries="all")
    qm = np.asarray(query_mask)
    for layer in (1, 2):   # scoring at a boundary uses the next layer on its input
        attn = model.layers[layer].self_attn
        kernel = lambda lin: jnp.asarray(lin.weight.detach().numpy().T)
        got = _scores_jit(
            jnp.asarray(out.hidden_states[layer].numpy()),
            jnp.asarray(model.layers[layer].input_layernorm.weight.detach().numpy()),
            kernel(attn.q_proj), kernel(attn.k_proj), inputs[4], inputs[5], query_mask,
            inputs[6], num_image=N_IMG, num_heads=HEADS, num_kv_heads=KV, rms_eps=EPS,
            rope_theta=THETA, rope_inv_freq=jnp.asarray(rotary.inv_freq.numpy()),
            rope_attention_scaling=float(rotary.attention_scaling), query_block=4)
        probs = out.attentions[layer].numpy().mean(1)          # [B, Lq, Lk]
        for b in range(B):
            start = int(inputs[6][b])
            want = probs[b][qm[b]][:, start:start + N_IMG].mean(0)
            np.testing.assert_allclose(np.asarray(got[b]), want, rtol=2e-5, atol=1e-6)
    # FastV: layer K_f - 1's own attention from the last valid row
    got = fastv_scores(jnp.asarray(out.hidden_states[1].numpy()),
                       jnp.asarray(model.layers[1].input_layernorm.weight.detach().numpy()),
                       kernel(model.layers[1].self_attn.q_proj),
                       kernel(model.layers[1].self_attn.k_proj), inputs[4], inputs[5],
                       inputs[6], num_image=N_IMG, num_heads=HEADS, num_kv_heads=KV, rms_eps=EPS,
                       rope_theta=THETA, rope_inv_freq=jnp.asarray(rotary.inv_freq.numpy()),
                       rope_attention_scaling=float(rotary.attention_scaling))
    probs = out.attentions[1].numpy().mean(1)
    for b in range(B):
        last, start = int(mask[b].sum()) - 1, int(inputs[6][b])
        np.testing.assert_allclose(np.asarray(got[b]), probs[b, last, start:start + N_IMG],
                                   rtol=2e-5, atol=1e-6)


def test_gqa_equals_explicitly_repeated_kv_heads_and_mha():
    inputs = make_inputs(1)
    qm, _ = eval_query_mask(inputs[5], inputs[6], N_IMG)
    grouped = scores(inputs, qm)
    wk = np.asarray(inputs[3]).reshape(D, KV, HD)
    repeated = jnp.asarray(np.repeat(wk, HEADS // KV, axis=1).reshape(D, HEADS * HD))
    mha = scores(inputs[:3] + (repeated,) + inputs[4:], qm, kv=HEADS)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(mha), rtol=1e-6, atol=1e-7)
    # MQA (one KV head) is the same as every query head reading that head
    single = jnp.asarray(wk[:, :1].reshape(D, HD))
    tiled = jnp.asarray(np.repeat(wk[:, :1], HEADS, axis=1).reshape(D, HEADS * HD))
    np.testing.assert_allclose(
        np.asarray(scores(inputs[:3] + (single,) + inputs[4:], qm, kv=1)),
        np.asarray(scores(inputs[:3] + (tiled,) + inputs[4:], qm, kv=HEADS)), rtol=1e-6)


def test_query_blocking_padding_and_batch_do_not_change_scores():
    inputs = make_inputs(2)
    qm, _ = eval_query_mask(inputs[5], inputs[6], N_IMG)
    ref = np.asarray(scores(inputs, qm))
    for block in (1, 5, 64):
        np.testing.assert_allclose(np.asarray(scores(inputs, qm, query_block=block)), ref,
                                   rtol=1e-6, atol=1e-8)
    # sample 1 alone, trimmed to its valid length, scores the same as in the padded batch
    n = int(np.asarray(inputs[5])[1].sum())
    hidden, norm, wq, wk, positions, mask, start = inputs
    alone = (hidden[1:2, :n], norm, wq, wk, positions[1:2, :n], mask[1:2, :n], start[1:2])
    np.testing.assert_allclose(np.asarray(scores(alone, qm[1:2, :n]))[0], ref[1], rtol=1e-6)
    chex.assert_shape(ref, (B, N_IMG))
    assert np.all(ref >= 0) and np.all(ref.sum(-1) <= 1 + 1e-6)


def test_no_retrace_and_stop_gradient():
    traces = []

    @jax.jit
    def fn(hidden, wq, wk, qm):
        traces.append(1)
        h, norm, _, _, pos, mask, start = make_inputs(0)
        return text_image_scores(hidden, norm, wq, wk, pos, mask, qm, start, num_image=N_IMG,
                                 num_heads=HEADS, num_kv_heads=KV, rms_eps=EPS, rope_theta=THETA)

    for seed in range(3):
        inputs = make_inputs(seed)
        qm, _ = eval_query_mask(inputs[5], inputs[6], N_IMG)
        jax.block_until_ready(fn(inputs[0], inputs[2], inputs[3], qm))
    assert len(traces) == 1
    grad = jax.grad(lambda h: fn(h, inputs[2], inputs[3], qm).sum())(inputs[0])
    # docs/ALGORITHM.md §3.2 step 1
    assert not np.any(np.asarray(grad)), "ranking inputs are detached"


def test_empty_query_set_and_out_of_range_image_score_zero():
    inputs = make_inputs(3)
    none = jnp.zeros((B, L), bool)
    assert not np.any(np.asarray(scores(inputs, none)))
    qm, _ = eval_query_mask(inputs[5], inputs[6], N_IMG)
    shifted = inputs[:6] + (jnp.array([-1, L - 2]),)
    got = np.asarray(scores(shifted, qm))
    assert np.all(np.isfinite(got)) and not np.any(got[0]) and not np.any(got[1, 2:])


def test_keep_top_image_tokens():
    s = jnp.array([[0.1, 0.5, 0.3, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    keep = keep_top_image_tokens(s, 3)
    assert keep.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(keep), [[1, 2, 3], [0, 1, 2]])
    assert keep_top_image_tokens(s, 0).shape == (2, 0)
    np.testing.assert_array_equal(np.asarray(keep_top_image_tokens(s, 5)), [list(range(5))] * 2)
    rng = np.random.default_rng(0)
    r = rng.normal(size=(3, 40))
    np.testing.assert_array_equal(np.asarray(keep_top_image_tokens(jnp.asarray(r), 7)),
                                  np.sort(np.argsort(-r, axis=-1)[:, :7], axis=-1))
    with pytest.raises(ValueError, match="k=6"):
        keep_top_image_tokens(s, 6)


def test_query_masks():
    mask = jnp.asarray(np.arange(10)[None] < np.array([[10], [7]]))
    start = jnp.array([1, 2])
    official = np.asarray(official_query_mask(mask, start, 3))
    np.testing.assert_array_equal(official[1], np.arange(10) >= 5)   # padding rows included
    every, flag = eval_query_mask(mask, start, 3, "all")
    np.testing.assert_array_equal(np.asarray(every[1]), (np.arange(10) >= 5) & (np.arange(10) < 7))
    last, _ = eval_query_mask(mask, start, 3, "last")
    np.testing.assert_array_equal(np.asarray(last).argmax(-1), [9, 6])
    assert np.asarray(last).sum() == 2 and not np.any(np.asarray(flag))
    # image at the very end: 'all' is empty and falls back to the last valid row
    every, flag = eval_query_mask(mask, jnp.array([7, 2]), 3, "all")
    np.testing.assert_array_equal(np.asarray(flag), [True, False])
    assert np.asarray(every[0]).argmax() == 9 and np.asarray(every[0]).sum() == 1
    # a text-only sample (image_start < 0) has no query rows and is never flagged
    every, flag = eval_query_mask(mask, jnp.array([-1, 2]), 3, "all")
    assert not np.any(np.asarray(every[0])) and not np.any(np.asarray(flag))

    x = -100
    labels = jnp.array([[x, x, x, x, x, 7, 8, x, x, 9],      # two answer spans
                        [x, x, x, x, 5, 6, 7, x, x, x]])     # caption right after the image
    mask = jnp.ones((2, 10), bool).at[1, 7:].set(False)
    start = jnp.array([0, 1])                                 # images at rows 0-2 and 1-3
    every, flag = train_query_mask(labels, mask, start, 3, "all")
    np.testing.assert_array_equal(np.asarray(every[0]), [0, 0, 0, 1, 1, 0, 0, 1, 1, 0])
    # sample 1 has no -100 row after the image: falls back to 'last'
    # (docs/ALGORITHM.md §6 D12), which is the last image row, the token just before
    # the caption
    np.testing.assert_array_equal(np.asarray(every[1]), [0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(flag), [False, True])
    last, flag = train_query_mask(labels, mask, start, 3, "last")
    np.testing.assert_array_equal(np.asarray(last), [[0, 0, 0, 0, 1, 0, 0, 0, 1, 0],
                                                     [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]])
    assert not np.any(np.asarray(flag))
    every, flag = train_query_mask(labels.at[1, 4].set(x), mask, start, 3, "all")
    np.testing.assert_array_equal(np.asarray(every[1]), [0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    assert not np.any(np.asarray(flag))
    # every row supervised from the image on: nothing to fall back to -> pass through
    every, flag = train_query_mask(jnp.array([[x, 1, 2, 3, 4, 5]]), jnp.ones((1, 6), bool),
                                   jnp.array([1]), 2, "all")
    assert not np.any(np.asarray(every)) and not np.any(np.asarray(flag))
    with pytest.raises(ValueError, match="salient"):
        eval_query_mask(mask, start, 3, "salient")


def expected_drop(keep, start, length, through, n_prev, out_len):
    rows = list(range(length))
    if not through and start >= 0:
        rows = rows[:start] + [start + k for k in keep] + rows[start + n_prev:]
    rows = rows[:out_len]
    return rows + [0] * (out_len - len(rows)), [1] * len(rows) + [0] * (out_len - len(rows))


@pytest.mark.parametrize("n_new", [0, 3, 6])
def test_drop_gather_map_matches_explicit_splice(n_new):
    rng = np.random.default_rng(n_new)
    n_prev, seq, batch = 6, 16, 4
    keep = np.sort(np.stack([rng.choice(n_prev, n_new, replace=False) for _ in range(batch)]), -1)
    start, lengths = np.array([0, 3, 5, -1]), np.array([16, 12, 11, 9])
    through = np.array([False, False, True, False])
    out_len = segment_length(lengths, through | (start < 0), n_prev, n_new)
    src, valid = drop_gather_index(jnp.asarray(keep, jnp.int32), jnp.asarray(start),
                                   jnp.asarray(lengths), jnp.asarray(through),
                                   n_prev=n_prev, out_len=out_len)
    for b in range(batch):
        want_src, want_valid = expected_drop(keep[b], start[b], lengths[b], through[b],
                                             n_prev, out_len)
        np.testing.assert_array_equal(np.asarray(src[b]), want_src)
        np.testing.assert_array_equal(np.asarray(valid[b]), want_valid)
    np.testing.assert_array_equal(
        np.asarray(reduced_lengths(jnp.asarray(lengths), jnp.asarray(through),
                                   jnp.asarray(start), n_prev, n_new)),
        np.asarray(valid).sum(-1))

    hidden = jnp.asarray(rng.normal(size=(batch, seq, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(-100, 50, size=(batch, seq)))
    mask = jnp.asarray(np.arange(seq)[None] < lengths[:, None]).astype(jnp.int32)
    positions = jnp.asarray(rng.integers(0, 99, size=(batch, seq)), jnp.int32)
    for mode in ("renumber", "keep"):
        out = apply_drop(hidden, src, valid, attention_mask=mask, labels=labels,
                         positions=positions, positions_mode=mode)
        v, s = np.asarray(valid), np.asarray(src)
        h = np.take_along_axis(np.asarray(hidden), s[..., None], 1) * v[..., None]
        np.testing.assert_array_equal(np.asarray(out.hidden), h)
        np.testing.assert_array_equal(np.asarray(out.labels),
                                      np.where(v, np.take_along_axis(np.asarray(labels), s, 1), -100))
        np.testing.assert_array_equal(np.asarray(out.attention_mask), v.astype(np.int32))
        want_pos = (np.where(v, np.arange(out_len)[None], 0) if mode == "renumber"
                    else np.where(v, np.take_along_axis(np.asarray(positions), s, 1), 0))
        np.testing.assert_array_equal(np.asarray(out.positions), want_pos)

    # gradients reach exactly the kept rows
    grad = jax.grad(lambda h: apply_drop(h, src, valid, attention_mask=mask).hidden.sum())(hidden)
    kept = np.zeros((batch, seq), bool)
    for b in range(batch):
        kept[b, np.asarray(src[b])[np.asarray(valid[b])]] = True
    np.testing.assert_array_equal(np.abs(np.asarray(grad)).sum(-1) > 0, kept)


def test_drop_argument_errors():
    with pytest.raises(ValueError, match="keep 4 of 3"):
        drop_gather_index(jnp.zeros((1, 4), jnp.int32), jnp.array([0]), jnp.array([5]),
                          jnp.array([False]), n_prev=3, out_len=5)
    with pytest.raises(ValueError, match="positions"):
        apply_drop(jnp.zeros((1, 3, 2)), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), bool),
                   attention_mask=jnp.ones((1, 3)), positions_mode="keep")
    inputs = make_inputs(0)
    with pytest.raises(ValueError, match="multiple"):
        scores(inputs, jnp.ones((B, L), bool), heads=HEADS, kv=3)
