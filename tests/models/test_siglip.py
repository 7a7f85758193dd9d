"""Flax SigLIP tower against HF PyTorch `SiglipVisionModel` (tiny random config, fp32):
every layer's hidden state, the feature layer LLaVA-OneVision reads (`stop_after`) and
the post-layernorm last hidden state."""
import numpy as np
import torch

from duet_jax.models.siglip import PARAM_AXES, SiglipVisionTower
from tests.helpers.tiny_hf import jax_params
from tests.helpers.tiny_onevision import random_videos, tiny_onevision


def test_tower_matches_hf_siglip_layer_by_layer():
    hf = tiny_onevision(scale=0.2)
    cfg, params = jax_params(hf)
    pixels = random_videos(1, 3, seed=4)[0]                      # three 56 px crops
    with torch.no_grad():
        ref = hf.model.vision_tower(torch.tensor(pixels), output_hidden_states=True)
    tower = SiglipVisionTower(cfg.vision)
    out = tower.apply(params["vision"], pixels, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == cfg.vision.num_hidden_layers + 1
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooled), ref.last_hidden_state.numpy(),
                               atol=1e-4, rtol=0)
    # an early stop reads the same hidden state as HF's hidden_states[layer + 1]
    early = tower.apply(params["vision"], pixels, stop_after=0)
    np.testing.assert_allclose(np.asarray(early.hidden), ref.hidden_states[1].numpy(),
                               atol=1e-4, rtol=0)
    assert early.pooled is None


def test_param_axes_cover_the_tower_exactly():
    hf = tiny_onevision()
    _, params = jax_params(hf)
    from duet_jax.checkpoints.orbax_io import flatten_tree
    assert set(flatten_tree(params["vision"])) == set(PARAM_AXES)
