"""Zoo presets on Qwen2.5-VL (docs/BASELINES.md §9) == a slow per-sample reference through
HF PyTorch: HF's merged image tokens, DivPrune (NumPy oracle) or random (the seeded draw
of that row) over them, the prompt gathered explicitly with every kept row at its HF
M-RoPE ids; DART at layer 2 from HF layer 1's post-RoPE keys and HF's final norm through
the NumPy oracle, kept rows at their original ids; then HF's own LM layers and head.
A batch of two samples with different text lengths (one grid) runs prefill and
KV-cached greedy generation; each row equals its sample's reference, the generated
tokens included. Budgets beyond the image are refused in one line before tracing."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from duet_jax.api.qwen25vl import Qwen25VL, collate
from duet_jax.generation.decode import generate_qwen
from duet_jax.models.qwen25vl import Qwen25VLModel, rope_index
from duet_jax.reduction import (ReductionConfig, SelectConfig, Stage2Config, dart_topk,
                                get_preset, random_select)
from tests.helpers.tiny_qwen import IMAGE, hf_inputs, jax_params, qwen_inputs, tiny_qwen
from tests.reduction import zoo_oracle

SIZE = (112, 224)        # grid (1, 8, 16): 32 merged tokens; 33 % keeps 11 (DART: 12)
N_NEW = 4


@functools.lru_cache(maxsize=None)
def _setup():
    hf = tiny_qwen(text_layers=4, vision_depth=2)
    cfg, params = jax_params(hf)
    samples = [dict(zip(("input_ids", "pixel_values", "image_grid_thw"),
                        qwen_inputs((SIZE,), text=text, seed=seed)))
               for seed, text in ((4, (5, 11)), (6, (3, 4)))]
    return hf, cfg, jax.tree.map(jnp.asarray, params), samples


def _hf_layers(lm, h, pos, lo, hi):
    """HF decoder layers lo..hi-1 on one unpadded sequence h [L, D] at M-RoPE ids pos [3, L]."""
    x = torch.tensor(h, dtype=torch.float32)[None]
    cos_sin = lm.rotary_emb(x, torch.tensor(pos)[:, None])
    mask = torch.full((len(h), len(h)), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        for i in range(lo, hi):
            x = lm.layers[i](x, attention_mask=mask, position_embeddings=cos_sin)
    return x[0].double().numpy(), cos_sin


def _reference(hf, sample, red, row, batch, extra=()):
    """Logits [L', V] of sample `row`'s reduced prompt followed by the `extra` generated
    ids (M-RoPE ids next_position + t); DART's text pivots come from the prompt only."""
    lm = hf.model.language_model
    ids, pixels, grid = sample["input_ids"], sample["pixel_values"], sample["image_grid_thw"]
    inputs = hf_inputs(ids, pixels, grid)
    pos3 = hf.model.get_rope_index(input_ids=inputs["input_ids"], image_grid_thw=inputs[
        "image_grid_thw"], mm_token_type_ids=inputs["mm_token_type_ids"])[0][:, 0].numpy()
    with torch.no_grad():
        text = lm.embed_tokens(torch.tensor(np.concatenate([ids[0], extra]).astype(np.int64)))
        emb = hf.model.visual(torch.tensor(pixels), grid_thw=inputs["image_grid_thw"]).pooler_output
    text, emb = text.double().numpy(), emb.double().numpy()
    start, n = int(np.argmax(ids[0] == IMAGE)), len(emb)
    keep = np.arange(n)
    if red.select is not None:
        k = red.select.count(n)
        if red.select.method == "divprune":
            keep = zoo_oracle.divprune(emb[None], k)["keep"][0]
        else:   # the seeded draw of this row
            keep = np.asarray(random_select(jax.random.key(red.select.seed), batch, k, n)["keep"])[row]
    after = np.arange(start + n, ids.shape[1])
    h = np.concatenate([text[:start], emb[keep], text[start + n:]])
    decoded = np.broadcast_to(pos3.max() + 1 + np.arange(len(extra)), (3, len(extra)))
    pos = np.concatenate([pos3[:, :start], pos3[:, start + keep], pos3[:, after], decoded], 1)
    if red.stage2 is None:
        h, _ = _hf_layers(lm, h, pos, 0, hf.config.text_config.num_hidden_layers)
    else:
        layer = red.stage2.layers[0]
        h_in, cos_sin = _hf_layers(lm, h, pos, 0, layer - 1)
        mod = lm.layers[layer - 1]
        with torch.no_grad():
            x = torch.tensor(h_in, dtype=torch.float32)
            keys = mod.self_attn.k_proj(mod.input_layernorm(x))
            keys = keys.view(1, len(h), -1, mod.self_attn.head_dim).transpose(1, 2)
            keys = apply_rotary_pos_emb(keys, keys, *cos_sin)[1][0].numpy()
        h, _ = _hf_layers(lm, h_in, pos, layer - 1, layer)
        with torch.no_grad():
            normed = lm.norm(torch.tensor(h, dtype=torch.float32)).numpy()
        kept = red.image_counts(n)[-1]
        sel = zoo_oracle.dart(normed, keys, image_start=start, n_image=n,
                              token_topk=dart_topk(kept), valid_length=ids.shape[1])["keep"]
        take = np.concatenate([np.arange(start), sel, np.arange(start + n, len(h))])
        h, _ = _hf_layers(lm, h[take], pos[:, take], layer, hf.config.text_config.num_hidden_layers)
    with torch.no_grad():
        return hf.lm_head(lm.norm(torch.tensor(h, dtype=torch.float32)[None]))[0].numpy()


@pytest.mark.parametrize("name", ["qwen25vl-divprune-33pct", "qwen25vl-random-33pct",
                                  "qwen25vl-dart-33pct"])
def test_batched_prefill_and_generation_equal_each_samples_reference(name):
    hf, cfg, params, samples = _setup()
    red, model = get_preset(name), Qwen25VLModel(cfg)
    batch = collate(samples)
    grids = tuple(map(tuple, batch["image_grid_thw"].tolist()))
    mask = jnp.asarray(batch["attention_mask"])
    pos, nxt = rope_index(cfg, batch["input_ids"], grids, batch["attention_mask"])
    args = (model, params, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["pixel_values"]),
            grids, jnp.asarray(pos))
    gen = generate_qwen(*args, jnp.asarray(nxt), mask, reduction=red, max_new_tokens=N_NEW,
                        with_logits=True)
    # the prefill's own final hidden rows (one compile for prefill and decode)
    logits = np.asarray(model.text.head(params["text"], gen.forward.hidden))
    valid, tokens = np.asarray(gen.forward.valid), np.asarray(gen.tokens)
    n = int((samples[0]["input_ids"] == IMAGE).sum())
    for b, sample in enumerate(samples):
        ref = _reference(hf, sample, red, b, len(samples), extra=tokens[b, :-1])
        length = sample["input_ids"].shape[1] - n + red.image_counts(red.image_tokens(n))[-1]
        assert valid[b].sum() == length == len(ref) - (N_NEW - 1) < sample["input_ids"].shape[1]
        np.testing.assert_allclose(logits[b, :length], ref[:length], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(ref[length - 1:].argmax(-1), tokens[b])
        np.testing.assert_allclose(np.asarray(gen.logits)[b], ref[length - 1:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("red,match", [
    (get_preset("qwen25vl-dart-11pct"),
     r"qwen25vl-dart-11pct: DART keeps 4 of the 32 image tokens entering the LM, below one pick "
     r"per pivot; use a larger ratio or image"),
    (ReductionConfig("q-divprune-40", select=SelectConfig("divprune", 40)),
     r"q-divprune-40: divprune keeps 40 tokens \(select.budget\) but the image block has 32; "
     r"give a budget in \[1, 32\]"),
    (ReductionConfig("q-dart-68", None, Stage2Config((2,), (), positions="keep", method="dart",
                                                     keep=(68,))),
     r"q-dart-68: stage2.keep=68 exceeds the 32 image tokens entering the LM; lower stage2.keep"),
])
def test_a_budget_beyond_the_image_is_one_line_before_tracing(red, match, monkeypatch):
    """Through the handle (logits and generation): the batch's grid gives 32 tokens."""
    _, cfg, params, samples = _setup()

    def traced(*a, **k):
        raise AssertionError("the vision tower was traced before the budget check")
    monkeypatch.setattr("duet_jax.models.qwen25vl_reduced.vision_forward", traced)
    handle = Qwen25VL(cfg, Qwen25VLModel(cfg), params)
    batch = collate(samples)
    for run in (lambda: handle.logits(batch["input_ids"], batch["pixel_values"],
                                      batch["attention_mask"], red,
                                      image_grid_thw=batch["image_grid_thw"]),
                lambda: handle.generate_batch(batch, max_new_tokens=2, reduction=red)):
        with pytest.raises(ValueError, match=f"^{match}$") as err:
            run()
        assert "\n" not in str(err.value)
