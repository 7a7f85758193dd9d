"""The CPU prefill attention in query blocks (`causal_block_attention`) is
`jax.nn.dot_product_attention` under a causal + key-validity mask: grouped-query heads,
right padding, a last block shorter than the others, float32 and bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.models.llama import causal_block_attention, causal_mask


@pytest.mark.parametrize("block", [64, 128, 512])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
def test_blocks_equal_dot_product_attention(block, dtype, tol):
    b, t, h, kv, hd = 2, 300, 4, 2, 16
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, h, hd)).astype(dtype)
    k = jax.random.normal(keys[1], (b, t, kv, hd)).astype(dtype)
    v = jax.random.normal(keys[2], (b, t, kv, hd)).astype(dtype)
    valid = jnp.arange(t)[None, :] < jnp.array([[t], [250]])     # sample 1: 50 padding rows
    mask = causal_mask(valid)
    ours = causal_block_attention(q, k, v, mask, hd ** -0.5, block)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=hd ** -0.5)
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32),
                               atol=tol, rtol=tol)


def test_block_gradients_equal_dot_product_attention():
    """Training runs the same path (remat included): its gradients must match too."""
    b, t, h, kv, hd = 1, 200, 2, 1, 8
    keys = jax.random.split(jax.random.key(1), 4)
    q, w = jax.random.normal(keys[0], (b, t, h, hd)), jax.random.normal(keys[3], (b, t, h, hd))
    k, v = (jax.random.normal(kk, (b, t, kv, hd)) for kk in keys[1:3])
    mask = causal_mask(jnp.ones((b, t), bool))
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
    ours = jax.grad(loss(lambda q, k, v: causal_block_attention(q, k, v, mask, hd ** -0.5, 64)),
                    argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask,
                                                                     scale=hd ** -0.5)),
                   argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-4, rtol=1e-4)
