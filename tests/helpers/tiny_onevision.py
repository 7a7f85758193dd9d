"""Tiny random HF LLaVA-OneVision models, processors and batches: the references of
`duet_jax.models.onevision`.

Geometry: 56 px crops of 14 px patches (N = 16 per crop, 4 x 4), pinpoints up
to 2x2 and 1x3 tiles, and `anyres_max_2` so a canvas above 2 crops is bilinearly
resized (2x2: 8x8 -> 5x5, a non-integer scale) while the unpadded 1x3 (2x12) is not.
"""
from __future__ import annotations

import numpy as np
import torch

from tests.helpers.tiny_hf import perturbed
from tests.helpers.tiny_next import block_batch, random_images

IMAGE_TOKEN, VIDEO_TOKEN = 120, 121
PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112], [56, 168]]
# (H, W) originals: 1x3 wide (unpadded rows), 2x2 (resized), 2x1 tall (unpadded cols), 1x2 exact
SIZES = [(30, 150), (100, 100), (150, 45), (56, 112)]


def tiny_onevision_config(*, aspect="anyres_max_2", kv_heads=2, text_layers=2, vision_layers=3,
                          feature_layer=-1, vocab=128, tie=False):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig
    vc = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                            num_attention_heads=4, image_size=56, patch_size=14,
                            vision_use_head=False)
    tc = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=text_layers, num_attention_heads=4,
                     num_key_value_heads=kv_heads, max_position_embeddings=512,
                     tie_word_embeddings=tie)
    return LlavaOnevisionConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN,
                                video_token_index=VIDEO_TOKEN, image_grid_pinpoints=PINPOINTS,
                                vision_aspect_ratio=aspect, vision_feature_layer=feature_layer,
                                tie_word_embeddings=tie)


def tiny_onevision(seed=0, scale=0.05, **kw):
    from transformers import LlavaOnevisionForConditionalGeneration
    return perturbed(LlavaOnevisionForConditionalGeneration, tiny_onevision_config(**kw), seed,
                     scale)


def onevision_processor(hf_config):
    """transformers' own OneVision pre-processing (PIL backend) for this config."""
    from transformers import LlavaOnevisionImageProcessorPil
    s = hf_config.vision_config.image_size
    return LlavaOnevisionImageProcessorPil(size={"height": s, "width": s},
                                           image_grid_pinpoints=hf_config.image_grid_pinpoints)


def image_pixels(hf, sizes, seed=0):
    enc = onevision_processor(hf.config)(random_images(sizes, seed), return_tensors="np")
    return enc["pixel_values"].astype(np.float32), np.asarray(enc["image_sizes"])


def hf_block_features(hf, pixels, image_sizes=None):
    """Per-sample packed blocks from HF's own get_image_features / get_video_features."""
    with torch.no_grad():
        if image_sizes is None:
            out = hf.model.get_video_features(torch.tensor(pixels)).pooler_output
            return list(out)
        out = hf.model.get_image_features(torch.tensor(pixels), torch.tensor(image_sizes))
    return list(out.pooler_output)


def random_videos(batch, frames, seed=0):
    """[B, F, 3, 56, 56] normalised-looking pixels."""
    return np.random.default_rng(seed).normal(size=(batch, frames, 3, 56, 56)).astype(np.float32)


def build_tiny_onevision_checkpoint(directory: str, seed: int = 0, aspect: str = "anyres_max_2") -> str:
    """A tiny llava-hf-style LLaVA-OneVision directory `duet_jax.load_llava` loads offline:
    model (vocab = the tiny tokenizer's, `<video>` added after `<pad>`), tokenizer and
    the OneVision image processor."""
    import os

    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    from tests.helpers.tiny_checkpoint import IMAGE_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE
    from tests.helpers.tokenizer import build_tiny_tokenizer
    os.makedirs(directory, exist_ok=True)
    build_tiny_tokenizer(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    tok.add_special_tokens({"additional_special_tokens": ["<video>"]})
    video_id = int(tok.convert_tokens_to_ids("<video>"))
    assert video_id == VOCAB_SIZE
    tok.save_pretrained(directory)
    cfg = tiny_onevision_config(vocab=VOCAB_SIZE + 1, aspect=aspect)
    cfg.image_token_index, cfg.video_token_index = IMAGE_TOKEN_ID, video_id
    cfg.text_config.pad_token_id, cfg.text_config.eos_token_id = PAD_TOKEN_ID, 2
    perturbed(LlavaOnevisionForConditionalGeneration, cfg, seed, scale=0.3).save_pretrained(directory)
    onevision_processor(cfg).save_pretrained(directory)
    return directory
