"""Sharded forward on 8 simulated CPU devices equals the single-device forward."""
import numpy as np
import pytest
import jax
from jax.sharding import NamedSharding

from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel
from duet_jax.sharding import batch_sharding, logical_axes, make_mesh, param_shardings
from tests.helpers.tiny_hf import jax_params, tiny_llava, llava_batch


def test_logical_axes_cover_column_and_row_parallel_layers():
    assert logical_axes(("text", "layers", "self_attn", "q_proj", "kernel"), 3) == ("layers", "embed", "heads")
    assert logical_axes(("text", "layers", "mlp", "down_proj", "kernel"), 3) == ("layers", "mlp", "embed")
    assert logical_axes(("text", "embed_tokens", "embedding"), 2) == ("vocab", "embed")
    assert logical_axes(("text", "norm", "scale"), 1) == (None,)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_forward_equals_single_device(shape):
    assert jax.device_count() == 8, "conftest must force 8 host devices"
    hf = tiny_llava()
    cfg, params = jax_params(hf)
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(14, 9, 12, 5, 14, 3, 8, 10))
    model = LlavaModel(cfg)
    ref, _ = jax.jit(model.apply)(params, ids, pixels, mask)
    mesh = make_mesh(*shape)
    shardings = param_shardings(params, mesh)
    sharded = jax.device_put(params, shardings)
    if shape[2] > 1:   # tensor-parallel layers really are split
        q = sharded["text"]["layers"]["self_attn"]["q_proj"]["kernel"]
        assert q.addressable_shards[0].data.shape[-1] == q.shape[-1] // shape[2]
    put = lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim))
    out, _ = jax.jit(model.apply)(sharded, put(ids), put(pixels), put(mask))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_sharded_reduced_forward_equals_single_device():
    from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
    red = ReductionConfig("t", Stage1Config(6, 3, 2), Stage2Config((1,), (0.5,)))
    hf = tiny_llava()
    cfg, params = jax_params(hf)
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(14, 9, 12, 5, 14, 3, 8, 10))
    model = LlavaModel(cfg)
    fwd = jax.jit(model.apply, static_argnames=("reduction",))
    ref, _ = fwd(params, ids, pixels, mask, reduction=red)
    mesh = make_mesh(2, 2, 2)
    put = lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim))
    out, _ = fwd(jax.device_put(params, param_shardings(params, mesh)), put(ids), put(pixels),
                 put(mask), reduction=red)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_bad_mesh_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(3, 2, 2)
