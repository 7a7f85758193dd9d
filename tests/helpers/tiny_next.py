"""Tiny random HF LLaVA-NeXT (AnyRes) models, processors and batches: the references
of `duet_jax.models.llava_next`.

Geometry: 56 px crops of 14 px patches (N = 16 per crop, 4 x 4), grid pinpoints
1x2, 2x1, 2x2 and 1x3 tiles, so images of different sizes get different grids,
different unpadding and different image-token counts.
"""
from __future__ import annotations

import numpy as np
import torch

from tests.helpers.tiny_hf import IMAGE_TOKEN, perturbed

PINPOINTS = [[56, 112], [112, 56], [112, 112], [56, 168]]
# (H, W) originals: wide 1x3 unpadded rows, square 2x2, tall 2x1 unpadded cols, 1x2 exact
SIZES = [(30, 150), (100, 100), (150, 45), (56, 112)]


def tiny_next_config(*, image_size=56, patch_size=14, kv_heads=2, text_layers=2,
                     vision_layers=3, pinpoints=None, vocab=128, max_positions=512):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                          num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                          projection_dim=16)
    tc = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=text_layers, num_attention_heads=4,
                     num_key_value_heads=kv_heads, max_position_embeddings=max_positions)
    return LlavaNextConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN,
                           image_grid_pinpoints=pinpoints or PINPOINTS,
                           image_seq_length=(image_size // patch_size) ** 2)


def tiny_llava_next(seed=0, scale=0.05, **kw):
    from transformers import LlavaNextForConditionalGeneration
    return perturbed(LlavaNextForConditionalGeneration, tiny_next_config(**kw), seed, scale)


def next_processor(hf_config):
    """transformers' own AnyRes pre-processing (PIL backend) for this config."""
    from transformers import LlavaNextImageProcessorPil
    s = hf_config.vision_config.image_size
    return LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                      image_grid_pinpoints=hf_config.image_grid_pinpoints)


def random_images(sizes, seed=0):
    from PIL import Image
    g = np.random.default_rng(seed)
    return [Image.fromarray((g.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in sizes]


def hf_image_token_counts(hf, pixel_values, image_sizes):
    """Image-token count of each image, from HF's own get_image_features (pack_image_features)."""
    with torch.no_grad():
        out = hf.model.get_image_features(torch.tensor(pixel_values), torch.tensor(image_sizes))
    return [int(f.shape[0]) for f in out.pooler_output], out.pooler_output


def next_batch(hf, sizes, text_lengths, image_at=3, seed=0):
    """Right-padded batch: ids [B, L], mask, pixel_values [B, P, 3, S, S], image_sizes [B, 2].
    Sample b: `image_at` text ids, its image block (HF's count), then the rest of its text."""
    proc = next_processor(hf.config)
    enc = proc(random_images(sizes, seed), return_tensors="np")
    pixels, image_sizes = enc["pixel_values"].astype(np.float32), enc["image_sizes"]
    counts, _ = hf_image_token_counts(hf, pixels, image_sizes)
    ids, mask = block_batch(counts, text_lengths, IMAGE_TOKEN, image_at, seed)
    return ids, mask, pixels, image_sizes


def block_batch(counts, text_lengths, token, image_at=3, seed=0):
    """Right-padded ids [B, L] + mask: `image_at` text ids, a block of `counts[b]` `token`
    ids, then the rest of sample b's `text_lengths[b]` text ids."""
    g = np.random.default_rng(seed)
    lengths = [n + t for n, t in zip(counts, text_lengths)]
    ids = np.zeros((len(counts), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for b, (n, ln) in enumerate(zip(counts, lengths)):
        ids[b, :ln] = g.integers(3, 100, size=ln)
        ids[b, image_at:image_at + n] = token
        mask[b, :ln] = 1
    return ids, mask


def build_tiny_next_checkpoint(directory: str, seed: int = 0) -> str:
    """A tiny llava-hf-style LLaVA-NeXT directory `duet_jax.load_llava` loads offline:
    model (vocab = the tiny SentencePiece tokenizer's), tokenizer, AnyRes processor."""
    import os

    from tests.helpers.tiny_checkpoint import IMAGE_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE
    from tests.helpers.tokenizer import build_tiny_tokenizer
    from transformers import LlavaNextForConditionalGeneration

    os.makedirs(directory, exist_ok=True)
    build_tiny_tokenizer(directory)
    cfg = tiny_next_config(vocab=VOCAB_SIZE, text_layers=2)
    cfg.image_token_index = IMAGE_TOKEN_ID
    cfg.text_config.pad_token_id = PAD_TOKEN_ID
    perturbed(LlavaNextForConditionalGeneration, cfg, seed, scale=0.3).save_pretrained(directory)
    from transformers import AutoTokenizer, LlavaNextProcessor
    # the llava-hf processor_config.json fields (CLS counted, then removed by "default")
    LlavaNextProcessor(next_processor(cfg), AutoTokenizer.from_pretrained(directory),
                       patch_size=cfg.vision_config.patch_size, num_additional_image_tokens=1,
                       vision_feature_select_strategy="default").save_pretrained(directory)
    return directory
