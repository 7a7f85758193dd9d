"""The CPU attention in tiles (`duet_jax.models.attention.blocked_attention`) is
`jax.nn.dot_product_attention`: causal with right padding (the LM prefill), full with
and without a key mask (the towers), grouped-query heads, batch 1 (no sample loop) and
batch > 1, a last tile shorter than the others, float32 and bfloat16, and gradients,
in each of its three plans."""
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import duet_jax.models.attention as attention
from duet_jax.models.attention import attend, blocked_attention
from duet_jax.models.llama import causal_mask


@pytest.fixture(params=["one key tile", "per sample, one key tile", "online tiles"])
def plan(request, monkeypatch):
    """The plans of `blocked_attention`: the batch at once with one key tile per query
    block (logits within CPU_LOGITS_BYTES); per sample, CPU_SAMPLE_BLOCK query rows
    against all keys (here 96: blocks of another size than the batch plan's, a short
    last one); per sample in online-softmax tiles. Batch 1 always takes the first."""
    big = request.param == "one key tile"
    per_sample = request.param == "per sample, one key tile"
    monkeypatch.setattr(attention, "CPU_LOGITS_BYTES", 1 << 40 if big else 0)
    monkeypatch.setattr(attention, "CPU_SAMPLE_LOGITS_BYTES", 1 << 40 if per_sample else 0)
    monkeypatch.setattr(attention, "CPU_SAMPLE_BLOCK", 96)
    return request.param


def _qkv(seed, b, t, h, kv, hd, dtype=jnp.float32, s=None):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, h, hd)).astype(dtype)
    k = jax.random.normal(keys[1], (b, s or t, kv, hd)).astype(dtype)
    v = jax.random.normal(keys[2], (b, s or t, kv, hd)).astype(dtype)
    return q, k, v


def _reference(q, k, v, mask, scale):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("block", [64, 128, 512])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
def test_causal_tiles_equal_dot_product_attention(b, block, dtype, tol, plan):
    t, h, kv, hd = 300, 4, 2, 16
    q, k, v = _qkv(0, b, t, h, kv, hd, dtype)
    valid = jnp.arange(t)[None, :] < jnp.array([[t], [250]])[:b]   # sample 1: 50 padding rows
    mask = causal_mask(valid)
    ours = blocked_attention(q, k, v, mask, hd ** -0.5, block, causal=True)
    ref = _reference(q, k, v, mask, hd ** -0.5)
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32),
                               atol=tol, rtol=tol)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_full_tiles_equal_dot_product_attention(batch, masked, plan):
    """The towers' case: every query sees every (valid) key; keys may outnumber queries
    (a prefill over a longer KV cache)."""
    t, s, h, hd = 200, 260, 4, 8
    q, k, v = _qkv(1, batch, t, h, h, hd, s=s)
    mask = None
    if masked:
        lengths = jnp.array([s, 131, 7][:batch])[:, None]
        mask = jnp.broadcast_to((jnp.arange(s)[None] < lengths)[:, None, None, :],
                                (batch, 1, t, s))
    ours = blocked_attention(q, k, v, mask, hd ** -0.5, 64, causal=False)
    ref = _reference(q, k, v, mask, hd ** -0.5)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-5, rtol=2e-5)


def test_attend_takes_the_tiles_only_on_cpu_above_one_block(monkeypatch):
    """`attend` is the one entry point: short sequences and non-CPU backends go to
    dot_product_attention, long CPU ones to the tiles (checked by making the tiles fail)."""
    import duet_jax.models.attention as attention
    q, k, v = _qkv(2, 1, 160, 2, 2, 8)
    mask = causal_mask(jnp.ones((1, 160), bool))

    def refuse(*a, **kw):
        raise AssertionError("tiles used")
    monkeypatch.setattr(attention, "blocked_attention", refuse)
    monkeypatch.setattr(attention, "CPU_ATTENTION_BLOCK", 256)
    np.testing.assert_allclose(np.asarray(attend(q, k, v, mask, 0.3, causal=True)),
                               np.asarray(_reference(q, k, v, mask, 0.3)), atol=1e-6)
    monkeypatch.setattr(attention, "CPU_ATTENTION_BLOCK", 64)
    if jax.default_backend() == "cpu":
        with pytest.raises(AssertionError, match="tiles used"):
            attend(q, k, v, mask, 0.3, causal=True)


def test_causal_needs_square_masked_attention():
    q, k, v = _qkv(3, 1, 16, 2, 2, 4, s=20)
    with pytest.raises(ValueError, match="as many keys as queries"):
        blocked_attention(q, k, v, None, 1.0, 8, causal=True)


@pytest.mark.parametrize("b", [1, 2])
def test_tile_gradients_equal_dot_product_attention(b, plan):
    """Training runs the same path (remat included): its gradients must match too."""
    t, h, kv, hd = 200, 2, 1, 8
    q, k, v = _qkv(4, b, t, h, kv, hd)
    w = jax.random.normal(jax.random.key(5), (b, t, h, hd))
    mask = causal_mask(jnp.ones((b, t), bool))
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
    ours = jax.grad(loss(lambda q, k, v: blocked_attention(q, k, v, mask, hd ** -0.5, 64,
                                                           causal=True)),
                    argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: _reference(q, k, v, mask, hd ** -0.5)),
                   argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-4, rtol=1e-4)


def _exp_count(jaxpr) -> int:
    """exp equations of a jaxpr, those inside loop bodies included (once each)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "exp"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _exp_count(sub)
    return count


@pytest.mark.parametrize("b,t,h,expected", [
    (8, 577, 4, "per sample, one key tile"),   # a CLIP tower's layer at batch 8
    (8, 300, 8, "per sample, one key tile"),   # a reduced LM segment at batch 8
    (8, 640, 8, "online tiles"),               # the unreduced LM: a sample's block is 3.9 MB
    (1, 640, 8, "one key tile")])              # batch 1: the batch plan
def test_default_thresholds_pick_the_plan(b, t, h, expected):
    """Which plan runs is read off the traced program: one exp per query block with one
    key tile (per sample: inside the loop over samples), two per further key tile with
    the online softmax (the rescale)."""
    q, k, v = (jax.ShapeDtypeStruct((b, t, h, 16), jnp.float32),) * 3
    mask = jax.ShapeDtypeStruct((b, 1, t, t), bool)
    block = attention.CPU_ATTENTION_BLOCK
    jaxpr = jax.make_jaxpr(lambda q, k, v, m: blocked_attention(q, k, v, m, 0.25, block,
                                                                causal=True))(q, k, v, mask)
    query_blocks = {"one key tile": -(-t // block),
                    "per sample, one key tile": -(-t // attention.CPU_SAMPLE_BLOCK)}
    exps = _exp_count(jaxpr.jaxpr)
    if expected == "online tiles":
        assert exps > -(-t // block)
    else:
        assert exps == query_blocks[expected]
