"""The benchmarks' PyTorch peers compute what the library computes: greedy tokens of the
KV-cached generation peer equal `generate_tokens`'s, and the training peer's loss equals
the training forward's, unreduced and with a DUET-style reduction (tiny random HF model;
the peers are HF modules, so this is also a check of the library against HF)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bench.torch_generate import greedy_generate
from bench.torch_train import peer_loss
from duet_jax.generation.decode import generate_tokens
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
from duet_jax.training.step import cross_entropy_sums
from tests.helpers.tiny_hf import jax_params, llava_batch, tiny_llava

IMAGE_AT = 3
REDUCTIONS = {"none": None,
              "duet": ReductionConfig("t-duet", Stage1Config(6, 3, 2), Stage2Config((1, 3), (0.5, 0.0)))}


@pytest.fixture(scope="module")
def pair():
    hf = tiny_llava(text_layers=4)
    hf.set_attn_implementation("sdpa")       # the peers call layers without a mask: causal sdpa
    cfg, params = jax_params(hf)
    return hf, cfg, params


@pytest.mark.parametrize("name", REDUCTIONS)
def test_generation_peer_tokens_equal_ours(pair, name):
    hf, cfg, params = pair
    red = REDUCTIONS[name]
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(10, 10), image_at=IMAGE_AT)
    ours = generate_tokens(LlavaModel(cfg), params, jnp.asarray(ids, jnp.int32),
                           jnp.asarray(pixels), jnp.asarray(mask, jnp.int32), reduction=red,
                           max_new_tokens=6, eos_id=-1).tokens
    ref = greedy_generate(hf, torch.tensor(ids), torch.tensor(pixels), red, IMAGE_AT, 6)
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


@pytest.mark.parametrize("name", REDUCTIONS)
def test_training_peer_loss_equals_ours(pair, name):
    hf, cfg, params = pair
    red = REDUCTIONS[name]
    question, answer = 4, 5
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(IMAGE_AT + question + answer,) * 2,
                                    image_at=IMAGE_AT)
    labels = np.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    logits, seq = LlavaModel(cfg).apply(params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels),
                                        jnp.asarray(mask, jnp.int32), jnp.asarray(labels), red,
                                        train=True)
    total, count = cross_entropy_sums(logits, seq.labels)
    with torch.no_grad():
        ref = peer_loss(hf, torch.tensor(ids), torch.tensor(pixels), torch.tensor(labels), red,
                        IMAGE_AT, question)
    assert int(count) == 2 * answer          # every answer token is a target
    np.testing.assert_allclose(float(total / count), float(ref), rtol=1e-5)
