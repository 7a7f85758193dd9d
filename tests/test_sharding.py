"""Sharded forward on 8 simulated CPU devices equals the single-device forward."""
import numpy as np
import pytest
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import PARAM_AXES, LlavaModel
from duet_jax.sharding import batch_sharding, logical_axes, make_mesh, param_shardings
from tests.helpers.tiny_hf import jax_params, tiny_llava, llava_batch


def test_logical_axes_cover_column_and_row_parallel_layers():
    assert logical_axes(("text", "layers", "self_attn", "q_proj", "kernel"), 3, PARAM_AXES) == ("layers", "embed", "heads")
    assert logical_axes(("text", "layers", "mlp", "down_proj", "kernel"), 3, PARAM_AXES) == ("layers", "mlp", "embed")
    assert logical_axes(("text", "embed_tokens", "embedding"), 2, PARAM_AXES) == ("vocab", "embed")
    assert logical_axes(("text", "norm", "scale"), 1, PARAM_AXES) == (None,)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_forward_equals_single_device(shape):
    assert jax.device_count() == 8, "conftest must force 8 host devices"
    hf = tiny_llava()
    cfg, params = jax_params(hf)
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(14, 9, 12, 5, 14, 3, 8, 10))
    model = LlavaModel(cfg)
    ref, _ = jax.jit(model.apply)(params, ids, pixels, mask)
    mesh = make_mesh(*shape)
    shardings = param_shardings(params, mesh, PARAM_AXES)
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
    out, _ = fwd(jax.device_put(params, param_shardings(params, mesh, PARAM_AXES)), put(ids), put(pixels),
                 put(mask), reduction=red)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_bad_mesh_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(3, 2, 2)


def _sds(*shape):
    return jax.ShapeDtypeStruct(shape, np.float32)


def _one_line_error(fn, *names) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in names), msg
    return msg


def test_a_rule_collision_raises_one_line():
    from duet_jax.sharding import DEFAULT_RULES
    params = {"text": {"layers": {"self_attn": {"q_proj": {"kernel": _sds(2, 64, 64)}}}}}
    rules = dict(DEFAULT_RULES, heads=("fsdp",))      # embed and heads both on fsdp
    _one_line_error(lambda: param_shardings(params, make_mesh(1, 8, 1), PARAM_AXES, rules),
                    "text/layers/self_attn/q_proj/kernel", "[2, 64, 64]", "fsdp=8", "'fsdp'",
                    "different mesh axes")


def test_an_indivisible_dimension_raises_one_line():
    params = {"text": {"embed_tokens": {"embedding": _sds(602, 64)}}}
    _one_line_error(lambda: param_shardings(params, make_mesh(1, 2, 4), PARAM_AXES),
                    "text/embed_tokens/embedding", "[602, 64]", "tensor=4", "'vocab'",
                    "smaller tensor axis")
    specs = param_shardings(params, make_mesh(4, 2, 1), PARAM_AXES)   # tensor=1 divides 602
    assert specs["text"]["embed_tokens"]["embedding"].spec == P("tensor", "fsdp")


def test_an_unmatched_leaf_or_unknown_axis_raises_naming_it():
    mesh = make_mesh(1, 2, 4)
    params = {"text": {"layers": {"self_attn": {"qkv": {"kernel": _sds(2, 64, 192)}}}}}
    _one_line_error(lambda: param_shardings(params, mesh, PARAM_AXES),
                    "text/layers/self_attn/qkv/kernel", "PARAM_AXES")
    _one_line_error(lambda: param_shardings({"w": _sds(4, 8)}, mesh, {("w",): ("embed", "hidden")}),
                    "parameter w", "'hidden'")
    _one_line_error(lambda: param_shardings({"w": _sds(4, 8)}, mesh, {("w",): ("embed",)}),
                    "parameter w", "2 dimensions")


def test_unstacked_layers_shard_like_stacked_ones():
    mesh = make_mesh(1, 2, 4)
    stacked = {"text": {"layers": {"self_attn": {"q_proj": {"kernel": _sds(3, 64, 64)}}}}}
    layer = {"self_attn": {"q_proj": {"kernel": _sds(64, 64)}}}
    unstacked = {"text": {"layers": (layer, layer, layer)}}
    one = param_shardings(stacked, mesh, PARAM_AXES)["text"]["layers"]["self_attn"]["q_proj"]
    many = param_shardings(unstacked, mesh, PARAM_AXES)["text"]["layers"]
    assert one["kernel"].spec == P(None, "fsdp", "tensor")
    assert all(l["self_attn"]["q_proj"]["kernel"].spec == P("fsdp", "tensor") for l in many)
