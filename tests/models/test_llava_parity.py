"""Flax CLIP / Llama / LLaVA against HF PyTorch on tiny random configs (fp32 1e-4)."""
import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel
from tests.helpers.tiny_hf import (assert_valid_rows_close, hf_logits, jax_params, llava_batch,
                                   tiny_llava)

CASES = {
    "gqa-56-default": dict(kv_heads=2),
    "mha-full": dict(kv_heads=4, select="full"),
    "mha-84-patch14": dict(kv_heads=4, image_size=84),
    "gqa-tied-llama3": dict(kv_heads=1, tie=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 64}),
    "linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # dynamic NTK rescales only beyond max_position_embeddings (24 < 16 + 24 tokens)
    "dynamic": dict(max_positions=24, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "mha-336-patch14": dict(kv_heads=4, image_size=336),    # LLaVA-1.5's 576 patches
}


def _setup(kw):
    hf = tiny_llava(**kw)
    return (hf, *jax_params(hf))


@pytest.mark.parametrize("name", sorted(CASES))
def test_llava_logits_match_torch(name):
    hf, cfg, params = _setup(CASES[name])
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(24, 11))
    ref = hf_logits(hf, ids, mask, pixel_values=pixels)
    logits, seq = jax.jit(LlavaModel(cfg).apply)(params, ids, pixels, mask)
    assert_valid_rows_close(logits, ref, mask)
    np.testing.assert_array_equal(np.asarray(seq.valid), mask.astype(bool))


def test_clip_hidden_states_and_probe_match_torch():
    hf, cfg, params = _setup(dict())
    _, _, pixels = llava_batch(hf.config)
    tower = hf.model.vision_tower
    with torch.no_grad():
        ref = tower(pixel_values=torch.tensor(pixels), output_hidden_states=True,
                    output_attentions=True)
    model = LlavaModel(cfg).vision
    probe_layer = cfg.feature_layer_index
    out = model.apply(params["vision"], pixels, output_hidden_states=True, probe_layer=probe_layer)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooled), ref.pooler_output.numpy(), atol=1e-4, rtol=0)
    attn = ref.attentions[probe_layer].numpy()              # [B, H, T, T]
    np.testing.assert_allclose(np.asarray(out.probe.cls_attn), attn[:, :, 0, 1:], atol=1e-5, rtol=0)
    # Key metric: head-mean of raw k_proj(LN1(x)) of the probe layer's input.
    layer = tower.encoder.layers[probe_layer]
    x = ref.hidden_states[probe_layer]
    with torch.no_grad():
        keys = layer.self_attn.k_proj(layer.layer_norm1(x))
    b, t, _ = keys.shape
    metric = keys.view(b, t, cfg.vision.num_attention_heads, -1).mean(2).numpy()
    np.testing.assert_allclose(np.asarray(out.probe.metric), metric, atol=1e-5, rtol=0)


def test_bf16_close_to_fp32():
    hf, cfg, params = _setup(dict())
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(14, 6))
    ref, _ = LlavaModel(cfg).apply(params, ids, pixels, mask)
    bf16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
    model = LlavaModel(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    out, _ = jax.jit(model.apply)(bf16, ids, pixels, mask)
    valid = mask.astype(bool)
    err = np.abs(np.asarray(out) - np.asarray(ref))[valid]
    # bf16 has 8 mantissa bits; tiny random logits are O(0.3).
    assert err.max() < 5e-2, err.max()
    # params dtype and compute dtype are independent settings
    mixed, _ = LlavaModel(cfg, dtype=jnp.bfloat16).apply(params, ids, pixels, mask)
    assert np.abs(np.asarray(mixed) - np.asarray(ref))[valid].max() < 5e-2
