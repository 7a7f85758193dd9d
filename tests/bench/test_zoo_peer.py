"""The PyTorch zoo peer (bench/torch_zoo.py: the official selection math in torch on HF
modules) computes what the JAX forward computes: last-token logits of `peer_prefill`
equal the bench's `jax_prefill` at batch 2 for every zoo method but CDPruner (and FastV,
whose split boundary the DART hook shares), on a tiny random LLaVA whose 12 x 12 patch
grid fits every method. A selection one row off moves the logits far past the
tolerance, so a peer that selects differently fails here. VisPruner's rounds, too
many for the tiny grid to reach, are compared at 576 patches in float64 (in float32
they are chaotic in rounding, docs/BASELINES.md §3)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import bench.torch_zoo as torch_zoo
from bench.common import jax_prefill
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import ReductionConfig, Stage2Config, vispruner_select
from tests.helpers.tiny_hf import jax_params, llava_batch, tiny_llava
from tests.models.test_zoo_forward import REDUCTIONS as ZOO
from tests.reduction.zoo_cases import probabilities, x64

IMAGE_AT = 3
REDUCTIONS = {**ZOO, "fastv": ReductionConfig(
    "t-fastv", None, Stage2Config((2,), (), queries="last", positions="keep", method="fastv",
                                  keep=(30,)))}


@pytest.fixture(scope="module")
def tiny():
    hf = tiny_llava(image_size=168, vision_layers=8, text_layers=4, kv_heads=2)
    hf.set_attn_implementation("sdpa")       # the peer calls layers without a mask: causal sdpa
    cfg, params = jax_params(hf)
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(10, 10), image_at=IMAGE_AT)
    inputs = (jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))
    return hf, LlavaModel(cfg), params, inputs, (torch.tensor(ids), torch.tensor(pixels))


def logits_pair(tiny, red):
    hf, model, params, inputs, (ids, pixels) = tiny
    red = red.validate(model.config.vision.num_patches, model.config.text.num_hidden_layers)
    ours = np.asarray(jax_prefill(model, params, *inputs, red))[:, 0]
    ref = torch_zoo.peer_prefill(hf, ids, pixels, red, IMAGE_AT).numpy()
    return ours, ref


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_peer_logits_equal_jax(tiny, name):
    ours, ref = logits_pair(tiny, REDUCTIONS[name])
    assert ours.shape == ref.shape == (2, tiny[0].config.text_config.vocab_size)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_one_row_off_fails(tiny, monkeypatch):
    """DivPrune's peer keeping one other row than the official pick: logits differ."""
    official = torch_zoo.divprune_keep

    def one_off(features, k):
        keep = official(features, k)
        other = next(i for i in range(len(features)) if i not in set(keep.tolist()))
        return torch.sort(torch.cat([keep[:-1], torch.tensor([other])])).values

    monkeypatch.setattr(torch_zoo, "divprune_keep", one_off)
    ours, ref = logits_pair(tiny, REDUCTIONS["divprune"])
    assert np.abs(ours - ref).max() > 1e-2


def test_vispruner_peer_equals_jax_at_576_in_float64():
    g = np.random.default_rng(0)
    feats, attn = g.normal(size=(2, 576, 64)), probabilities(g, 2, 4, 576)
    ref = torch_zoo.vispruner_keep(torch.tensor(feats), torch.tensor(attn), 64, 0.5).numpy()
    with x64():
        ours = np.asarray(vispruner_select(jnp.asarray(feats), jnp.asarray(attn), 64, 0.5)["keep"])
    np.testing.assert_array_equal(ours, ref)
