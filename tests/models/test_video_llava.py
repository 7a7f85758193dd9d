"""Flax Video-LLaVA against HF `VideoLlavaForConditionalGeneration` on tiny random configs:
unreduced logits (images and videos) within 1e-4 fp32, identical greedy decodes, and the
reduced video forward (per-frame Stage 1, Stage 2 over the frame block) against the slow
gathered-subset reference of tests/models/test_reduced_forward.py."""
import functools

import numpy as np
import pytest
import torch
import jax

from duet_jax.generation.decode import generate_tokens
from duet_jax.models.video_llava import VideoLlavaModel, view_params
from duet_jax.reduction import (ReductionConfig, Stage1Config, Stage2Config, average_visual_tokens,
                                get_preset)
from tests.helpers.tiny_hf import assert_valid_rows_close, hf_logits
from tests.helpers.tiny_video import jax_video_params, tiny_video_llava, video_batch
from tests.models.test_reduced_forward import _reference
from tests.reduction import oracle


@functools.lru_cache(maxsize=None)
def _setup(**kw):
    hf = tiny_video_llava(**kw)
    return (hf, *jax_video_params(hf))


def _media_key(media: str) -> str:
    """The HF (and our) keyword of an image or a video batch."""
    return "pixel_values" if media == "image" else "pixel_values_videos"


CASES = {"gqa-default": {}, "mha-full": dict(kv_heads=4, select="full"),
         "56px-8-frames": dict(image_size=56, frames=8, vision_layers=2, text_layers=2)}


@pytest.mark.parametrize("media", ["image", "video"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_torch(case, media):
    hf, cfg, params = _setup(**CASES[case])
    ids, mask, pixels = video_batch(hf.config, media, text_lengths=(16, 9))
    ref = hf_logits(hf, ids, mask, **{_media_key(media): pixels})
    model = VideoLlavaModel(cfg)
    logits, seq = jax.jit(model.apply)(params, ids, attention_mask=mask,
                                       **{_media_key(media): pixels})
    assert_valid_rows_close(logits, ref, mask)
    np.testing.assert_array_equal(np.asarray(seq.valid), mask.astype(bool))


def test_video_block_keeps_every_frames_cls_row():
    """HF's video path: F * (N+1) tokens (CLS kept per frame), images N (default)."""
    hf, cfg, params = _setup()
    n = cfg.vision.num_patches
    assert cfg.media("video").image_seq_length == cfg.num_frames * (n + 1) == 20
    assert cfg.media("image").image_seq_length == n
    _, _, pixels = video_batch(hf.config, "video")
    feats = VideoLlavaModel(cfg).view("video").image_features(view_params(params, "video"), pixels)
    with torch.no_grad():
        ref = hf.model.get_video_features(torch.tensor(pixels)).pooler_output.numpy()
    assert feats.tokens.shape == (2, cfg.num_frames * (n + 1), cfg.text.hidden_size)
    np.testing.assert_allclose(np.asarray(feats.tokens).reshape(ref.shape), ref, atol=1e-5, rtol=0)


def test_towers_are_separate():
    """Images use image_tower, videos video_tower: swapping them changes the logits."""
    hf, cfg, params = _setup()
    ids, mask, pixels = video_batch(hf.config, "video")
    model = VideoLlavaModel(cfg)
    a, _ = model.apply(params, ids, attention_mask=mask, pixel_values_videos=pixels)
    swapped = {**params, "video_tower": params["image_tower"]}
    b, _ = model.apply(swapped, ids, attention_mask=mask, pixel_values_videos=pixels)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


@pytest.mark.parametrize("media", ["image", "video"])
def test_greedy_decode_matches_hf_generate(media):
    hf, cfg, params = _setup()
    ids, mask, pixels = video_batch(hf.config, media, text_lengths=(12, 12), seed=4)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          max_new_tokens=6, do_sample=False, pad_token_id=0,
                          eos_token_id=None, **{_media_key(media): torch.tensor(pixels)})
    ref = ref[:, ids.shape[1]:].numpy()
    view = VideoLlavaModel(cfg).view(media)
    out = generate_tokens(view, view_params(params, media), ids, pixels, mask,
                          max_new_tokens=6, eos_id=-1)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


# ----------------------------------------------------------------------------- reduced

REDUCTIONS = {
    "duet": ReductionConfig("v-duet", Stage1Config(3, 1, 2), Stage2Config((1, 3), (0.5, 0.0))),
    "duet-last": ReductionConfig("v-last", Stage1Config(2, 2, 2),
                                 Stage2Config((2,), (0.4,), queries="last")),
    "stage2-only": ReductionConfig("v-s2", None, Stage2Config((2,), (0.25,))),
}


def _hf_video_features(hf, frames, stage1):
    """HF video tower (eager) per frame -> NumPy-oracle Stage 1 per frame -> HF projector,
    frames concatenated in time order: [F*K, Dt]."""
    tower = hf.model.video_tower
    layer_sel = hf.config.vision_feature_layer
    with torch.no_grad():
        out = tower(torch.tensor(frames), output_attentions=True, output_hidden_states=True)
        feats = out.hidden_states[layer_sel]                      # [F, N+1, Dv], CLS kept
        if stage1 is not None:
            layer_idx = len(out.hidden_states) - 1 + layer_sel
            layer = getattr(tower, "vision_model", tower).encoder.layers[layer_idx]
            keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[layer_idx]))
            metric = keys.view(*keys.shape[:2], layer.self_attn.num_heads, -1).mean(2)
            cls_attn = out.attentions[layer_idx][:, :, 0, 1:]
            per_frame = [oracle.vision_merge(
                cls_attn[f:f + 1].numpy().astype(np.float64),
                feats[f:f + 1].numpy().astype(np.float64),
                metric[f:f + 1].numpy().astype(np.float64), stage1.dominant, stage1.contextual,
                stage1.width, stage1.mode)[0][0] for f in range(len(frames))]
            feats = torch.tensor(np.stack(per_frame), dtype=torch.float32)
        tokens = hf.model.multi_modal_projector(feats).numpy()    # [F, K, Dt]
    return tokens.reshape(-1, tokens.shape[-1])


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduced_video_forward_equals_gathered_reference(name):
    red = REDUCTIONS[name]
    hf, cfg, params = _setup()
    red.validate(cfg.vision.num_patches, cfg.text.num_hidden_layers, crops=cfg.num_frames)
    ids, mask, pixels = video_batch(hf.config, "video", text_lengths=(14, 8), seed=3)
    view = VideoLlavaModel(cfg).view("video")
    vparams = view_params(params, "video")
    logits, seq = jax.jit(view.apply, static_argnames=("reduction",))(
        vparams, ids, pixels, mask, reduction=red)
    logits, valid = np.asarray(logits), np.asarray(seq.valid)
    n0 = red.image_tokens(cfg.vision.num_patches, cfg.num_frames) if red.stage1 else \
        cfg.media("video").image_seq_length
    for b in range(len(ids)):
        feats = _hf_video_features(hf, pixels[b], red.stage1)
        assert len(feats) == n0
        ref = _reference(hf, view, vparams, ids[b], pixels[b], int(mask[b].sum()),
                         int(mask[b].sum()), red, np.zeros(ids.shape[1], bool), feats=feats)
        assert valid[b].sum() == len(ref)
        np.testing.assert_allclose(logits[b, :len(ref)], ref, atol=1e-4, rtol=0)


def test_reduced_video_decode_runs_through_the_caches():
    """Greedy decode after Stage 1 + Stage 2 = argmax of the reduced forward, token by token."""
    hf, cfg, params = _setup()
    red = REDUCTIONS["duet"]
    ids, mask, pixels = video_batch(hf.config, "video", text_lengths=(10, 10), seed=2)
    view = VideoLlavaModel(cfg).view("video")
    vparams = view_params(params, "video")
    out = generate_tokens(view, vparams, ids, pixels, mask, reduction=red, max_new_tokens=3,
                          eos_id=-1)
    tokens = np.asarray(out.tokens)
    seq_ids = ids
    for t in range(3):   # no padding: the forward's last row predicts the next token
        logits, _ = view.apply(vparams, seq_ids, pixels, np.ones_like(seq_ids), reduction=red)
        np.testing.assert_array_equal(np.argmax(np.asarray(logits)[:, -1], -1), tokens[:, t])
        seq_ids = np.concatenate([seq_ids, tokens[:, t:t + 1]], axis=1)


@pytest.mark.parametrize("preset,avg", [("videollava-duet-960", 960.0)])
def test_preset_token_accounting_on_video_llava_geometry(preset, avg):
    """8 frames of 256 patches (224 px / 14) and 32 LM layers: the tokens the reduced forward
    actually carries per layer average to the docs/ALGORITHM.md §4.2 budget (Table 14). (The
    136 preset's arithmetic, 135.0, is pinned in tests/reduction/test_presets.py; one
    32-layer compile is enough here.)"""
    hf, cfg, params = _setup(image_size=224, frames=8, vision_layers=2, text_layers=32)
    assert (cfg.vision.num_patches, cfg.num_frames, cfg.video_seq_length) == (256, 8, 2056)
    ids, mask, pixels = video_batch(hf.config, "video", text_lengths=(6,), seed=1)
    view = VideoLlavaModel(cfg).view("video")
    red = get_preset(preset)
    fwd = jax.jit(view.forward, static_argnames=("reduction",))(
        view_params(params, "video"), ids, pixels, mask, reduction=red)
    text_rows = 6
    bounds = [0, *red.stage2.layers, 32]     # segment s runs layers bounds[s]..bounds[s+1]-1
    per_layer = []
    for s, seg in enumerate(fwd.segments):
        per_layer += [int(np.asarray(seg.valid).sum()) - text_rows] * (bounds[s + 1] - bounds[s])
    assert per_layer[0] == red.image_tokens(256, crops=8)
    assert np.mean(per_layer) == average_visual_tokens(preset, 256, 32, crops=8) == avg
