"""CDPruner in the LLaVA-1.5 forward (docs/BASELINES.md §4, §9) == a slow per-sample
reference: HF CLIP text model + HF CLIPModel visual_projection on the HF LLaVA tower's
post_layernorm'd patches, the NumPy oracle's selection, explicit gathers, then the
unreduced layers. Each sample has its own question (one short, one over 77 tokens:
two segments), so the batch equals per-sample runs; the handle loads the tower from
a CLIPModel dir (named or inside the checkpoint) and without one refuses the preset."""
import os
import shutil

import numpy as np
import pytest
import torch

import duet_jax
from duet_jax.api.clip_text import load_clip_text_tower
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import ReductionConfig, SelectConfig
from tests.helpers.tiny_checkpoint import build_tiny_checkpoint, patch_grid_image
from tests.helpers.tiny_clip import build_tiny_clip
from tests.models.test_reduced_forward import reference_language_model
from tests.models.test_zoo_forward import _TinyLlava, _embed, mixed_batch, tiny  # noqa: F401
from tests.reduction import zoo_oracle

RED = ReductionConfig("t-cdpruner", select=SelectConfig("cdpruner", 20))
QUESTIONS = ["<image>\nwhat is the color of the cat?\nAnswer the question using a single "
             "word or phrase.", "<image>\n" + " ".join(["what is the color of the cat"] * 5)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(str(tmp_path_factory.mktemp("clip")), vision_hidden=32)


def reference_text_embeds(hf_clip, tok, message):
    """Upstream's text path: untruncated ids + mask, zero-padded to 77k, [M, 77] -> [M, P]."""
    question = message.replace("<image>\n", "").replace(
        "\nAnswer the question using a single word or phrase.", "")
    enc = tok(text=[question], return_tensors="pt")
    t = 77
    pad = t * ((enc.input_ids.shape[1] - 1) // t + 1) - enc.input_ids.shape[1]
    ids, mask = (torch.cat([v, v.new_zeros((1, pad))], 1).reshape(-1, t)
                 for v in (enc.input_ids, enc.attention_mask))
    with torch.no_grad():
        out = hf_clip.text_model(input_ids=ids, attention_mask=mask)
        return hf_clip.text_projection(out.pooler_output).numpy()


def reference_logits(hf, hf_clip, tok, model, params, ids, mask, pixels, row):
    cfg = model.config
    length = int(mask[row].sum())
    seq_ids = ids[row, :length]
    start = int(np.argmax(seq_ids == cfg.image_token_index))
    with torch.no_grad():
        out = hf.model.vision_tower(torch.tensor(pixels[row][None]), output_hidden_states=True)
        feats = out.hidden_states[hf.config.vision_feature_layer][:, 1:]
        proj = hf.model.multi_modal_projector(feats)[0].numpy()
        vt = hf.model.vision_tower
        post = getattr(vt, "vision_model", vt).post_layernorm   # the LLaVA tower's own
        image_embeds = hf_clip.visual_projection(post(feats))[0].numpy()
    text = reference_text_embeds(hf_clip, tok, QUESTIONS[row])
    assert len(text) == (1, 2)[row]
    sel = zoo_oracle.cdpruner(proj[None], image_embeds[None], text, RED.select.budget)
    block = proj[sel["keep"][0]]
    emb = np.asarray(_embed(model.text, params["text"], seq_ids[None]))[0]
    h = np.concatenate([emb[:start], block, emb[start + cfg.image_seq_length:]])
    return reference_language_model(hf, model, params, h, start, len(block), len(h), RED,
                                    np.zeros(len(h), bool))


def test_cdpruner_forward_equals_per_sample_reference(tiny, clip_dir):
    from transformers import CLIPModel, CLIPTokenizerFast
    hf, cfg, params = tiny
    clip, projection = load_clip_text_tower(clip_dir, cfg.vision.hidden_size)
    handle = _TinyLlava(cfg, LlavaModel(cfg), {**params, "clip_projection": projection}, None,
                        clip)
    assert handle.zoo_inputs == ("clip_text_tower",)
    ids, mask, pixels = mixed_batch(hf.config)
    logits = np.asarray(handle.logits(ids, pixels, mask, reduction=RED, questions=QUESTIONS))
    hf_clip = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizerFast.from_pretrained(clip_dir)
    lengths = mask.sum(1) - (cfg.image_seq_length - RED.select.budget)
    for row in range(len(ids)):
        ref = reference_logits(hf, hf_clip, tok, handle.module, params, ids, mask, pixels, row)
        assert len(ref) == lengths[row]
        np.testing.assert_allclose(logits[row, :len(ref)], ref, atol=1e-4, rtol=0)
    # generation: prefill is the same reduced forward, so the first token is its argmax
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
             "has_image": np.ones(len(ids), bool), **clip.segments(QUESTIONS)}
    tokens = np.asarray(handle.generate_batch(batch, max_new_tokens=2, reduction=RED).tokens)
    for row in range(len(ids)):
        assert tokens[row, 0] == int(np.argmax(logits[row, lengths[row] - 1]))
    with pytest.raises(ValueError, match="pass questions="):
        handle.logits(ids, pixels, mask, reduction=RED)


def test_load_llava_reads_the_clip_text_tower(tmp_path, clip_dir):
    """Picked up from MODEL/clip_text_tower or named; without one, one line naming the flag."""
    bare = build_tiny_checkpoint(str(tmp_path / "llava"))
    red = ReductionConfig("t-cdp", select=SelectConfig("cdpruner", 6))
    plain = duet_jax.load_llava(bare)
    assert plain.zoo_inputs == ()
    with pytest.raises(ValueError, match=r"^t-cdp: cdpruner needs .*--clip-text-tower DIR"):
        plain.generate(["What?"], [patch_grid_image(0)[0]], reduction=red, max_new_tokens=2)
    named = duet_jax.load_llava(bare, clip_text_tower=clip_dir)
    shutil.copytree(clip_dir, os.path.join(bare, "clip_text_tower"))
    inside = duet_jax.load_llava(bare)
    images = [patch_grid_image(1)[0], patch_grid_image(2)[0]]
    answers = [h.generate(QUESTIONS, images, reduction=red, max_new_tokens=3)
               for h in (named, inside)]
    assert inside.zoo_inputs == ("clip_text_tower",) and answers[0] == answers[1]
    batch = inside.encode(QUESTIONS, images)
    assert batch["clip_segments"].tolist() == [[True, False], [True, True]]
    alone = inside.generate(QUESTIONS[1:], images[1:], reduction=red, max_new_tokens=3)
    assert alone == answers[1][1:]
    with pytest.raises(FileNotFoundError, match="CLIPModel"):
        duet_jax.load_llava(bare, clip_text_tower=str(tmp_path / "nope"))
