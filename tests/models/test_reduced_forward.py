"""Reduced LLaVA forward == a slow per-sample reference: image features from HF
CLIP's eager attention through the NumPy Stage-1 oracle and the HF projector, then
the unreduced layers on explicitly gathered token subsets, ranking with HF PyTorch
eager attention."""
import functools

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
from tests.helpers.tiny_hf import jax_params, tiny_llava, llava_batch
from tests.reduction import oracle

REDUCTIONS = {
    "duet": ReductionConfig("t-duet", Stage1Config(6, 3, 2), Stage2Config((1, 3), (0.5, 0.0))),
    "duet-last-3stage": ReductionConfig("t-last", Stage1Config(5, 2, 3),
                                        Stage2Config((1, 2, 3), (0.6, 0.3, 0.1), queries="last")),
    "visionzip": ReductionConfig("t-vz", Stage1Config(6, 4, mode="visionzip"), None),
    "duet-salient": ReductionConfig("t-sal", Stage1Config(6, 3, 2),
                                    Stage2Config((2,), (0.5,), queries="salient")),
    "pdrop": ReductionConfig("t-pdrop", None, Stage2Config((2,), (0.25,), queries="last")),
    "fastv": ReductionConfig("t-fastv", None, Stage2Config((2,), keep=(5,), queries="last",
                                                           positions="keep", method="fastv")),
}


def _hf_image_scores(hf, layer, h, start, n_img, queries, positions):
    """Head- and query-mean eager attention of HF layer `layer` onto the image columns."""
    lm = hf.model.language_model
    x = torch.tensor(np.asarray(h, np.float32))[None]
    pos = torch.tensor(positions)[None]
    cos_sin = lm.rotary_emb(x, pos)
    length = x.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
    mod = lm.layers[layer]
    with torch.no_grad():
        _, w = mod.self_attn(hidden_states=mod.input_layernorm(x), position_embeddings=cos_sin,
                             attention_mask=mask)
    w = w[0].mean(0).numpy()                               # [L, L]
    return w[queries][:, start:start + n_img].mean(0)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _run_layers(text, params, x, positions, lo, hi):
    return text.run_layers(params, x[None], positions[None], jnp.ones((1, x.shape[0]), bool),
                           lo, hi)[0][0]


def _hf_image_features(hf, pixels, stage1):
    """HF CLIP (eager attention) -> NumPy-oracle Stage 1 -> HF projector: [K, Dt]."""
    tower = hf.model.vision_tower
    with torch.no_grad():
        out = tower(torch.tensor(pixels), output_attentions=True, output_hidden_states=True)
        feats = out.hidden_states[hf.config.vision_feature_layer]          # [1, N+1, Dv]
        if stage1 is None:
            feats = feats[:, 1:]
        else:
            layer_idx = len(out.hidden_states) - 1 + hf.config.vision_feature_layer
            layer = getattr(tower, "vision_model", tower).encoder.layers[layer_idx]
            keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[layer_idx]))
            heads = layer.self_attn.num_heads
            metric = keys.view(*keys.shape[:2], heads, -1).mean(2)
            cls_attn = out.attentions[layer_idx][:, :, 0, 1:]
            tokens, _, _ = oracle.vision_merge(
                cls_attn.numpy().astype(np.float64), feats.numpy().astype(np.float64),
                metric.numpy().astype(np.float64), stage1.dominant, stage1.contextual,
                stage1.width, stage1.mode)
            feats = torch.tensor(tokens, dtype=torch.float32)
        return hf.model.multi_modal_projector(feats)[0].numpy()


def reference_language_model(hf, model, params, h, start, n_img, prompt_len, red, salient):
    """Stage 2 by explicit gathers on one unpadded sequence h [L, D] whose image block
    of n_img rows starts at `start`, ranked with HF's eager attention; returns the
    logits [L', V] of the final sequence."""
    cfg = model.config
    s2 = red.stage2
    counts = s2.image_counts(n_img) if s2 else [n_img]
    bounds = [0, *(s2.layers if s2 else ()), cfg.text.num_hidden_layers]
    positions = np.arange(len(h))
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        fastv = s2 is not None and s2.method == "fastv" and s < len(bounds) - 2
        run = lambda x, a, b: np.asarray(_run_layers(model.text, params["text"], x, positions, a, b))
        h_pre = run(h, lo, hi - 1) if fastv else None
        h = run(h_pre, hi - 1, hi) if fastv else run(h, lo, hi)
        if s == len(bounds) - 2 or counts[s] == 0:
            continue
        rows = np.arange(len(h))
        after = rows[(rows >= start + counts[s]) & (rows < prompt_len)]
        queries = {"all": after, "last": np.array([prompt_len - 1]),
                   "salient": np.union1d(after[salient[after]], [prompt_len - 1])}[s2.queries]
        layer = hi - 1 if fastv else hi
        score = _hf_image_scores(hf, layer, h_pre if fastv else h, start, counts[s], queries,
                                 positions)
        keep = np.sort(np.argsort(-score, kind="stable")[:counts[s + 1]])
        take = np.concatenate([rows[:start], start + keep, rows[start + counts[s]:]])
        h, salient = h[take], salient[take]
        positions = positions[take] if s2.positions == "keep" else np.arange(len(take))
        prompt_len -= counts[s] - counts[s + 1]
    return np.asarray(model.text.head(params["text"], jnp.asarray(h)[None]))[0]


def _reference(hf, model, params, ids, pixels, length, prompt_len, red, salient, feats=None):
    """Batch-1, unpadded, explicit gathers; returns logits of the final sequence.

    feats: the image block's features [K, Dt] (default: HF CLIP + oracle Stage 1 on
    `pixels`); other families (Video-LLaVA) pass their own HF-built block."""
    cfg = model.config
    ids = ids[None, :length]
    if feats is None:
        feats = _hf_image_features(hf, pixels[None], red.stage1)
    start = int(np.argmax(ids[0] == cfg.image_token_index))
    emb = np.asarray(model.text.embed(params["text"], ids))[0]
    h = np.concatenate([emb[:start], feats, emb[start + cfg.image_seq_length:]])
    salient = np.concatenate([salient[:start], np.zeros(len(feats), bool),
                              salient[start + cfg.image_seq_length:length]])
    prompt_len = prompt_len - (cfg.image_seq_length - len(feats))
    return reference_language_model(hf, model, params, h, start, len(feats), prompt_len, red,
                                    salient)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduced_forward_equals_gathered_reference(name):
    red = REDUCTIONS[name]
    hf = tiny_llava(text_layers=4, kv_heads=2)
    cfg, params = jax_params(hf)
    red.validate(cfg.vision.num_patches, cfg.text.num_hidden_layers)
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(14, 8, 11), seed=3)
    model = LlavaModel(cfg)
    prompt_lengths = mask.sum(1)
    salient = (np.random.default_rng(5).random(ids.shape) < 0.3) & (mask == 1)
    logits, seq = jax.jit(model.apply, static_argnames=("reduction",))(
        params, ids, pixels, mask, reduction=red, prompt_lengths=prompt_lengths,
        salient_mask=salient)
    logits, valid = np.asarray(logits), np.asarray(seq.valid)
    for b in range(len(ids)):
        ref = _reference(hf, model, params, ids[b], pixels[b], int(mask[b].sum()),
                         int(prompt_lengths[b]), red, salient[b])
        assert valid[b].sum() == len(ref)
        np.testing.assert_allclose(logits[b, :len(ref)], ref, atol=1e-4, rtol=0)


def test_no_reduction_is_the_plain_forward():
    hf = tiny_llava()
    cfg, params = jax_params(hf)
    ids, mask, pixels = llava_batch(hf.config)
    a, _ = LlavaModel(cfg).apply(params, ids, pixels, mask, reduction=None)
    b, _ = LlavaModel(cfg).apply(params, ids, pixels, mask,
                                 reduction=ReductionConfig("none", None, None))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stage1_gradients_reach_an_unfrozen_tower():
    """Selection is not differentiable, but gathered and merged rows are: with the tower
    trainable (recipe `full`) the loss reaches its params (docs/ALGORITHM.md §7)."""
    hf = tiny_llava()
    cfg, params = jax_params(hf)
    ids, mask, pixels = llava_batch(hf.config)
    model = LlavaModel(cfg)
    red = REDUCTIONS["duet"]

    def loss(vision):
        logits, _ = model.apply({**params, "vision": vision}, ids, pixels, mask, reduction=red)
        return jnp.mean(logits ** 2)

    grads = jax.grad(loss)(params["vision"])
    norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0
    # the layer after the feature layer never runs, so it gets exactly zero
    last = jax.tree.map(lambda g: g[-1], grads["layers"])
    assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(last))


@pytest.mark.parametrize("name", ["duet", "fastv"])
def test_unstacked_layers_compute_the_same(name):
    """The inference layout (layers as a tuple of per-layer trees) is the stacked model:
    same logits, same greedy decode through the per-segment caches."""
    from duet_jax.generation.decode import generate_tokens
    from duet_jax.models.llava import unstack_params

    hf = tiny_llava(text_layers=4, kv_heads=2)
    cfg, params = jax_params(hf)
    unstacked = unstack_params(params)
    assert isinstance(unstacked["text"]["layers"], tuple) and len(unstacked["text"]["layers"]) == 4
    ids, mask, pixels = llava_batch(hf.config, text_lengths=(14, 8), seed=3)
    model, red = LlavaModel(cfg), REDUCTIONS[name]
    a, _ = model.apply(params, ids, pixels, mask, reduction=red)
    b, _ = model.apply(unstacked, ids, pixels, mask, reduction=red)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
    gen = lambda p: np.asarray(generate_tokens(model, p, ids, pixels, mask, reduction=red,
                                               max_new_tokens=4, eos_id=-1).tokens)
    np.testing.assert_array_equal(gen(params), gen(unstacked))
