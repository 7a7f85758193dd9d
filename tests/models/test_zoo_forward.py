"""Zoo methods in the LLaVA forward (docs/BASELINES.md §9) == a slow per-sample reference:
HF CLIP (eager attention) and HF projector, the NumPy zoo oracle's selection,
explicitly gathered rows, then the unreduced layers (batch 1, unpadded). DART's
reference reads layer K-1's post-RoPE keys with HF's own modules. Batched rows
with different image starts and lengths must equal their single-sample references,
and handle generation starts with the reduced forward's argmax."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from duet_jax.api.llava import Llava
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import (ReductionConfig, SelectConfig, Stage2Config, dart_topk,
                                random_select)
from tests.helpers.tiny_hf import jax_params, llava_batch, tiny_llava
from tests.models.test_reduced_forward import _run_layers, reference_language_model
from tests.reduction import zoo_oracle

DART = Stage2Config((2,), (), positions="keep", method="dart", keep=(20,))
REDUCTIONS = {   # 144 patches (12 x 12 grid), 8 CLIP layers, 4 LM layers
    "divprune": ReductionConfig("t-divprune", select=SelectConfig("divprune", 20)),
    "vispruner": ReductionConfig("t-vispruner", select=SelectConfig("vispruner", 24)),
    "random": ReductionConfig("t-random", select=SelectConfig("random", 20, seed=7)),
    "pool": ReductionConfig("t-pool", select=SelectConfig("pool", 20)),
    "vscan": ReductionConfig("t-vscan", None, Stage2Config((2,), (), queries="last", keep=(8,)),
                             SelectConfig("vscan", 24)),
    # a shallower local-scan layer (the miniature's 4-layer tower needs one below its 2)
    "vscan-shallow": ReductionConfig("t-vscan-shallow", select=SelectConfig("vscan", 24,
                                                                            shallow_layer=1)),
    "dart": ReductionConfig("t-dart", None, DART),
}


@pytest.fixture(scope="module")
def tiny():
    hf = tiny_llava(image_size=168, vision_layers=8, text_layers=4, kv_heads=2)
    cfg, params = jax_params(hf)
    return hf, cfg, params


def mixed_batch(cfg):
    """Two samples whose image blocks start at different rows, different lengths."""
    a = llava_batch(cfg, text_lengths=(14,), image_at=3, seed=3)
    b = llava_batch(cfg, text_lengths=(9,), image_at=4, seed=4)
    length = max(a[0].shape[1], b[0].shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, length - x.shape[1])))
    return (np.concatenate([pad(a[0]), pad(b[0])]), np.concatenate([pad(a[1]), pad(b[1])]),
            np.concatenate([a[2], b[2]]))


def reference_block(hf, pixels, select, row, batch):
    """HF tower + projector + NumPy oracle: the image block [K, Dt] of one sample."""
    with torch.no_grad():
        out = hf.model.vision_tower(torch.tensor(pixels[None]), output_attentions=True,
                                    output_hidden_states=True)
        layer = len(out.hidden_states) - 1 + hf.config.vision_feature_layer   # its layer index
        feats = out.hidden_states[hf.config.vision_feature_layer][:, 1:]
        project = lambda x: hf.model.multi_modal_projector(torch.tensor(x, dtype=torch.float32))
        proj = project(feats.numpy())[0].numpy()
        attn = np.stack([a[:, :, 0, 1:].numpy() for a in out.attentions])     # [L, 1, H, N]
    k = select.count(feats.shape[1])
    if select.method == "divprune":
        return proj[zoo_oracle.divprune(proj[None], k)["keep"][0]]
    if select.method == "vispruner":
        keep = zoo_oracle.vispruner(feats.numpy(), attn[layer], k,
                                    select.important_ratio)["keep"][0]
        with torch.no_grad():
            return project(feats.numpy()[:, keep])[0].numpy()
    if select.method == "pool":
        return zoo_oracle.pool_tokens(proj[None], k)[0]
    if select.method == "vscan":
        return zoo_oracle.vscan_stage1(attn, proj[None], k,
                                       shallow_layer=select.shallow_layer)["merged"][0]
    keep = np.asarray(random_select(jax.random.key(select.seed), batch, k, len(proj))["keep"])
    return proj[keep[row]]          # random: the seeded draw of this row (its own tests)


@functools.partial(jax.jit, static_argnums=(0,))
def _embed(text, params, ids):
    return text.embed(params, ids)


def dart_reference(hf, model, params, h, start, n_img, s2):
    """DART by explicit gathers on one unpadded sequence h [L, D]: layers before K on
    every row, the oracle's keep from HF's layer K-1 keys and final norm, then the
    kept rows at their original positions; returns logits [L', V]."""
    layer = s2.layers[0]
    positions = np.arange(len(h))
    h_in = np.asarray(_run_layers(model.text, params["text"], h, positions, 0, layer - 1))
    lm = hf.model.language_model
    mod = lm.layers[layer - 1]
    with torch.no_grad():
        x = torch.tensor(h_in)[None]
        cos, sin = lm.rotary_emb(x, torch.tensor(positions)[None])
        keys = mod.self_attn.k_proj(mod.input_layernorm(x))
        keys = keys.view(1, len(h), -1, mod.self_attn.head_dim).transpose(1, 2)
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
    h_out = np.asarray(_run_layers(model.text, params["text"], h_in, positions, layer - 1, layer))
    with torch.no_grad():
        normed = lm.norm(torch.tensor(h_out)).numpy()
    sel = zoo_oracle.dart(normed, keys[0].numpy(), image_start=start, n_image=n_img,
                          token_topk=dart_topk(s2.keep[0]))
    take = np.concatenate([np.arange(start), sel["keep"], np.arange(start + n_img, len(h))])
    h, positions = h_out[take], positions[take]
    h = np.asarray(_run_layers(model.text, params["text"], h, positions, layer,
                               model.config.text.num_hidden_layers))
    return np.asarray(model.text.head(params["text"], jnp.asarray(h)[None]))[0]


def reference_logits(hf, model, params, ids, mask, pixels, red, row):
    cfg = model.config
    length = int(mask[row].sum())
    seq_ids = ids[row, :length]
    start = int(np.argmax(seq_ids == cfg.image_token_index))
    if red.select is not None:
        block = reference_block(hf, pixels[row], red.select, row, len(ids))
    else:
        with torch.no_grad():
            out = hf.model.vision_tower(torch.tensor(pixels[row][None]),
                                        output_hidden_states=True)
            feats = out.hidden_states[hf.config.vision_feature_layer][:, 1:]
            block = hf.model.multi_modal_projector(feats)[0].numpy()
    emb = np.asarray(_embed(model.text, params["text"], jnp.asarray(seq_ids[None])))[0]
    h = np.concatenate([emb[:start], block, emb[start + cfg.image_seq_length:]])
    if red.stage2 is not None and red.stage2.method == "dart":
        return dart_reference(hf, model, params, h, start, len(block), red.stage2)
    prompt_len = len(h)
    return reference_language_model(hf, model, params, h, start, len(block), prompt_len, red,
                                    np.zeros(len(h), bool))


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_zoo_forward_equals_gathered_reference(tiny, name):
    hf, cfg, params = tiny
    red = REDUCTIONS[name].validate(cfg.vision.num_patches, cfg.text.num_hidden_layers)
    ids, mask, pixels = mixed_batch(hf.config)
    model = LlavaModel(cfg)
    logits, seq = jax.jit(model.apply, static_argnames=("reduction",))(
        params, ids, pixels, mask, reduction=red)
    logits, valid = np.asarray(logits), np.asarray(seq.valid)
    for row in range(len(ids)):
        ref = reference_logits(hf, model, params, ids, mask, pixels, red, row)
        assert valid[row].sum() == len(ref)
        np.testing.assert_allclose(logits[row, :len(ref)], ref, atol=1e-4, rtol=0)


class _TinyLlava(Llava):
    pad_id = 0      # no tokenizer directory: the pad id of llava_batch


@pytest.mark.parametrize("name", ["dart", "vscan"])
def test_handle_generation_starts_with_the_reduced_argmax(tiny, name):
    """Prefill + KV-cached decode through the handle (DART: kept positions; VScan: a
    select section and a Stage-2 drop): the first token is the reduced forward's
    argmax at each sample's last row, and the padded sample with the later image
    decodes as it does alone (batch 1)."""
    hf, cfg, params = tiny
    red = REDUCTIONS[name]
    ids, mask, pixels = mixed_batch(hf.config)
    handle = _TinyLlava(cfg, LlavaModel(cfg), params)
    logits = np.asarray(handle.logits(ids, pixels, mask, reduction=red))
    final = red.image_counts(red.image_tokens(cfg.vision.num_patches))[-1]
    lengths = mask.sum(1) - (cfg.image_seq_length - final)
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
             "has_image": np.ones(len(ids), bool)}
    tokens = np.asarray(handle.generate_batch(batch, max_new_tokens=3, reduction=red).tokens)
    for row in range(len(ids)):
        assert tokens[row, 0] == int(np.argmax(logits[row, lengths[row] - 1]))
    one = {k: v[1:] for k, v in batch.items()}
    alone = np.asarray(handle.generate_batch(one, max_new_tokens=3, reduction=red).tokens)
    np.testing.assert_array_equal(alone[0], tokens[1])


def test_vscan_refuses_a_shallow_layer_not_below_the_deep_one(tiny):
    hf, cfg, params = tiny
    red = ReductionConfig("t-vscan-deep", select=SelectConfig("vscan", 24, shallow_layer=6))
    ids, mask, pixels = mixed_batch(hf.config)
    with pytest.raises(ValueError, match=r"select.shallow_layer=6 is not below the deep layer 6 "
                                         r"of this 8-layer tower; give a lower one"):
        LlavaModel(cfg).apply(params, ids, pixels, mask, reduction=red)
