"""Layer-stack helpers shared by the CLIP and Llama stacks."""
import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.common import layer_at, run_stack, unstack_layers


def _stack(num_layers=3):
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(num_layers, 4, 5)), jnp.float32),
            "b": {"v": jnp.asarray(rng.normal(size=(num_layers, 5)), jnp.float32)}}


def test_unstack_matches_per_layer_slices_and_run_stack():
    stacked = _stack()
    layers = unstack_layers(stacked)
    assert len(layers) == 3
    for i, layer in enumerate(layers):
        jax.tree.map(np.testing.assert_array_equal, layer, layer_at(stacked, i))

    def body(x, p):
        y = jnp.tanh(x @ p["w"] + p["b"]["v"])[:, :4]
        return y, y.sum()

    x = jnp.ones((2, 4))
    (a, sa), (b, sb) = run_stack(body, x, stacked), run_stack(body, x, layers)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sa), np.asarray(sb), rtol=1e-6)


def test_donated_unstack_frees_the_stack_and_keeps_the_values():
    expected = unstack_layers(_stack())
    stacked = _stack()
    leaves = jax.tree.leaves(stacked)
    layers = unstack_layers(stacked, donate=True)
    assert all(leaf.is_deleted() for leaf in leaves)
    jax.tree.map(np.testing.assert_array_equal, layers, expected)


def test_host_arrays_are_split_without_deleting():
    stacked = jax.tree.map(np.asarray, _stack())
    layers = unstack_layers(stacked, donate=True)
    np.testing.assert_array_equal(layers[2]["w"], stacked["w"][2])
