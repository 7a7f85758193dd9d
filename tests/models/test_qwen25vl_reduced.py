"""Reduced Qwen2.5-VL forward == a slow gathered-subset reference built from HF PyTorch:
Stage-1 scores from HF's own last vision block (full attention, HF 2-D RoPE), the NumPy
oracle's `duet` selection (no CLS: a dummy CLS row that never wins), the HF LM layers run
on explicitly gathered rows with their original M-RoPE ids, and Stage-2 ranking with HF
eager attention of the next layer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from duet_jax.models.qwen25vl import Qwen25VLModel, rope_index
from duet_jax.models.qwen25vl_reduced import reduced_logits
from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
from duet_jax.reduction.stage1_nocls import clipped_counts
from tests.helpers.tiny_qwen import IMAGE, hf_inputs, jax_params, qwen_inputs, tiny_qwen
from tests.reduction import oracle

S2 = Stage2Config((2, 3), (0.5, 0.25), positions="keep")
REDUCTIONS = {
    "duet": ReductionConfig("q-duet", Stage1Config(6, 3, 2, cls_token=False), S2),
    "clipped": ReductionConfig("q-clip", Stage1Config(40, 9, 4, cls_token=False), S2),
    "c0": ReductionConfig("q-c0", Stage1Config(5, 0, 4, cls_token=False), None),
    "stage2-last": ReductionConfig("q-last", None, Stage2Config((1,), (0.3,), queries="last",
                                                               positions="keep")),
}


@pytest.fixture(scope="module")
def tiny():
    hf = tiny_qwen(text_layers=4, vision_depth=3)
    cfg, params = jax_params(hf)
    return hf, cfg, jax.tree.map(jnp.asarray, params)


def _hf_stage1(hf, pixels, grid, s1):
    """Merged embeddings [T, D] -> (kept rows [K, D] in place, kept indices [K])."""
    vis = hf.model.visual
    grab = {}
    hook = vis.blocks[-1].register_forward_pre_hook(lambda m, a, kw: grab.update(x=a[0] if a else kw["hidden_states"]),
                                                    with_kwargs=True)
    g = torch.tensor(grid)
    with torch.no_grad():
        emb = vis(torch.tensor(pixels), grid_thw=g).pooler_output.double().numpy()
        hook.remove()
        x, n = grab["x"], grab["x"].shape[0]
        widx, _ = get_vision_window_index(g, 2, vis.window_size, vis.patch_size)
        cos, sin = vis.rotary_pos_emb(x, get_vision_position_ids(g, 2))
        cos, sin = (vis.permute_input_for_window_attn(t, widx, n) for t in (cos, sin))
        blk = vis.blocks[-1]
        q, k, _ = blk.attn.qkv(blk.norm1(x)).reshape(n, 3, blk.attn.num_heads, -1).permute(1, 0, 2, 3)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k = q.double().numpy(), k.double().numpy()
    logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    rev = np.argsort(widx.numpy())
    scores = probs.mean(0).sum(0).reshape(-1, 4).mean(1)[rev]
    metric = k.mean(1).reshape(n // 4, 4, -1).mean(1)[rev]
    t = len(emb)
    d, c = clipped_counts(t, s1.dominant, s1.contextual)
    pad = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:]), a])[None]
    tokens, pos, _ = oracle.vision_merge(scores[None, None], pad(emb), pad(metric), d + 1, c,
                                         s1.width, "duet")
    idx = pos[0, 1:] - 1
    order = np.argsort(idx)
    return tokens[0, 1:][order], idx[order]


def _hf_scores(layer, h, pos3, cos_sin, start, n_img, queries):
    length = h.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        _, w = layer.self_attn(hidden_states=layer.input_layernorm(h), position_embeddings=cos_sin,
                               attention_mask=mask)
    return w[0].double().mean(0).numpy()[queries][:, start:start + n_img].mean(0)


def _reference(hf, ids, pixels, grid, red, extra=(), next_position=0, keeps=None):
    """Logits of the reduced prompt (+ `extra` generated ids at M-RoPE ids next_position + t;
    then the drops reuse `keeps` instead of ranking)."""
    lm = hf.model.language_model
    pos3 = hf.model.get_rope_index(**{k: v for k, v in hf_inputs(ids, pixels, grid).items()
                                      if k in ("input_ids", "mm_token_type_ids", "image_grid_thw")})[0]
    pos3 = pos3[:, 0].numpy()                                       # [3, L]
    with torch.no_grad():
        text_emb = lm.embed_tokens(torch.tensor(ids))[0].double().numpy()
        emb = hf.model.visual(torch.tensor(pixels), grid_thw=torch.tensor(grid)).pooler_output.double().numpy()
    start, t = int(np.argmax(ids[0] == IMAGE)), len(emb)
    rows, idx = emb, np.arange(t)
    if red.stage1 is not None:
        rows, idx = _hf_stage1(hf, pixels, grid, red.stage1)
    take = np.concatenate([np.arange(start), start + idx, np.arange(start + t, ids.shape[1])])
    h = np.concatenate([text_emb[:start], rows, text_emb[start + t:]])
    pos = pos3[:, take]
    if len(extra):
        with torch.no_grad():
            h = np.concatenate([h, lm.embed_tokens(torch.tensor(extra)).double().numpy()])
        pos = np.concatenate([pos, np.broadcast_to(next_position + np.arange(len(extra)), (3, len(extra)))], 1)
    n = len(rows)
    s2 = red.stage2
    counts = s2.image_counts(n) if s2 else [n]
    bounds = [0, *(s2.layers if s2 else ()), hf.config.text_config.num_hidden_layers]
    for s in range(len(bounds) - 1):
        x = torch.tensor(h, dtype=torch.float32)[None]
        p = torch.tensor(pos)[:, None]
        cos_sin = lm.rotary_emb(x, p)
        length = x.shape[1]
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
        with torch.no_grad():
            for i in range(bounds[s], bounds[s + 1]):
                x = lm.layers[i](x, attention_mask=mask, position_embeddings=cos_sin)
        h = x[0].double().numpy()
        if s == len(bounds) - 2:
            break
        r = np.arange(len(h))
        queries = r[r >= start + counts[s]] if s2.queries == "all" else np.array([len(h) - 1])
        if keeps is None:
            score = _hf_scores(lm.layers[bounds[s + 1]], x, p, cos_sin, start, counts[s], queries)
            keep = np.sort(np.argsort(-score, kind="stable")[:counts[s + 1]])
        else:
            keep = keeps[s]
        take = np.concatenate([r[:start], start + keep, r[start + counts[s]:]])
        h, pos = h[take], pos[:, take]
    with torch.no_grad():
        return hf.lm_head(lm.norm(torch.tensor(h, dtype=torch.float32)[None]))[0].numpy()


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduced_forward_equals_gathered_reference(tiny, name):
    hf, cfg, params = tiny
    red = REDUCTIONS[name]
    ids, pixels, grid = qwen_inputs(((90, 130),), text=(5, 11), seed=4)
    pos, _ = rope_index(cfg, ids, grid)
    logits, valid = reduced_logits(Qwen25VLModel(cfg), params, jnp.asarray(ids), jnp.asarray(pixels),
                                   tuple(map(tuple, grid.tolist())), jnp.asarray(pos), None, red)
    ref = _reference(hf, ids, pixels, grid, red)
    assert int(np.asarray(valid).sum()) == len(ref) == logits.shape[1]
    np.testing.assert_allclose(np.asarray(logits)[0], ref, atol=1e-4, rtol=0)


def test_reduced_decode_attends_to_each_segments_kept_tokens(tiny):
    """Cached decoding == the HF layers re-run on prompt + generated tokens with the
    prefill's Stage-1/Stage-2 choices: every generated token is that reference's argmax."""
    from duet_jax.generation.decode import generate_qwen
    from duet_jax.models.qwen25vl_reduced import reduced_forward
    hf, cfg, params = tiny
    red = REDUCTIONS["duet"]
    ids, pixels, grid = qwen_inputs(((90, 130),), text=(5, 11), seed=4)
    pos, nxt = rope_index(cfg, ids, grid)
    args = (Qwen25VLModel(cfg), params, jnp.asarray(ids), jnp.asarray(pixels),
            tuple(map(tuple, grid.tolist())), jnp.asarray(pos))
    n_new = 6
    gen = generate_qwen(*args, jnp.asarray(nxt), reduction=red, max_new_tokens=n_new,
                        with_logits=True)
    tokens = np.asarray(gen.tokens)[0]
    fwd = jax.jit(reduced_forward, static_argnames=("model", "grids", "reduction"))(
        *args, None, red)
    keeps = [np.asarray(k)[0] for k in fwd.kept]
    ref = _reference(hf, ids, pixels, grid, red, extra=tokens[:-1], next_position=int(nxt[0]),
                     keeps=keeps)
    np.testing.assert_array_equal(ref[-n_new:].argmax(-1), tokens)
    np.testing.assert_allclose(np.asarray(gen.logits)[0], ref[-n_new:], atol=1e-4, rtol=0)
    assert len(ref) < ids.shape[1] + n_new - 1        # the reference really is reduced


@pytest.mark.parametrize("name", ["duet", "stage2-last"])
def test_a_same_grid_batch_equals_each_sample_alone(tiny, name):
    """Batch 2 (one grid, different text lengths, right padding) == batch 1 per sample:
    logits of the valid rows and greedy decodes."""
    from duet_jax.api.qwen25vl import collate
    from duet_jax.generation.decode import generate_qwen
    hf, cfg, params = tiny
    red, model = REDUCTIONS[name], Qwen25VLModel(cfg)
    samples = []
    for seed, text in ((4, (5, 11)), (6, (3, 4))):
        ids, pixels, grid = qwen_inputs(((90, 130),), text=text, seed=seed)
        samples.append({"input_ids": ids, "pixel_values": pixels, "image_grid_thw": grid})
    batch = collate(samples)
    grids = tuple(map(tuple, batch["image_grid_thw"].tolist()))
    pos, nxt = rope_index(cfg, batch["input_ids"], grids, batch["attention_mask"])
    args = (model, params, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["pixel_values"]),
            grids, jnp.asarray(pos))
    logits, valid = reduced_logits(*args, jnp.asarray(batch["attention_mask"]), red)
    gen = generate_qwen(*args, jnp.asarray(nxt), jnp.asarray(batch["attention_mask"]),
                        reduction=red, max_new_tokens=5)
    for b, s in enumerate(samples):
        one_grid = tuple(map(tuple, s["image_grid_thw"].tolist()))
        p1, n1 = rope_index(cfg, s["input_ids"], one_grid)
        one = (model, params, jnp.asarray(s["input_ids"]), jnp.asarray(s["pixel_values"]),
               one_grid, jnp.asarray(p1))
        ref, _ = reduced_logits(*one, None, red)
        n = int(np.asarray(valid)[b].sum())
        assert n == ref.shape[1]
        np.testing.assert_allclose(np.asarray(logits)[b, :n], np.asarray(ref)[0], atol=1e-5, rtol=0)
        ref_gen = generate_qwen(*one, jnp.asarray(n1), reduction=red, max_new_tokens=5)
        np.testing.assert_array_equal(np.asarray(gen.tokens)[b], np.asarray(ref_gen.tokens)[0])


def test_a_mixed_grid_reduced_batch_is_a_clear_error(tiny):
    from duet_jax.api.qwen25vl import collate
    _, cfg, params = tiny
    samples = [dict(zip(("input_ids", "pixel_values", "image_grid_thw"),
                        qwen_inputs((size,), seed=1))) for size in ((90, 130), (60, 60))]
    batch = collate(samples)
    grids = tuple(map(tuple, batch["image_grid_thw"].tolist()))
    pos, _ = rope_index(cfg, batch["input_ids"], grids, batch["attention_mask"])
    with pytest.raises(ValueError, match="all of one grid"):
        reduced_logits(Qwen25VLModel(cfg), params, jnp.asarray(batch["input_ids"]),
                       jnp.asarray(batch["pixel_values"]), grids, jnp.asarray(pos),
                       jnp.asarray(batch["attention_mask"]), REDUCTIONS["duet"])
