"""Tiny random HF PyTorch models: the numerical reference of the Flax ones."""
from __future__ import annotations

import tempfile

import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaForConditionalGeneration

IMAGE_TOKEN = 120


def tiny_llava_config(*, image_size=56, patch_size=14, kv_heads=2, select="default",
                      vision_layers=3, text_layers=2, tie=False, rope_scaling=None,
                      vocab=128, max_positions=256) -> HFLlavaConfig:
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                          num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                          projection_dim=16)
    tc = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=text_layers, num_attention_heads=4,
                     num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                     tie_word_embeddings=tie, rope_scaling=rope_scaling)
    n = (image_size // patch_size) ** 2 + (select == "full")
    return HFLlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN,
                         image_seq_length=n, vision_feature_select_strategy=select,
                         tie_word_embeddings=tie)


def tiny_llava(seed=0, **kw) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = tiny_llava_config(**kw)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    with torch.no_grad():   # default init leaves biases 0 and norms 1: make every value matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def jax_params(hf: LlavaForConditionalGeneration):
    """(LlavaConfig, params) through the real checkpoint path: save_pretrained + load_params."""
    from duet_jax.checkpoints import load_params
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        return load_params(d)


def llava_batch(cfg: HFLlavaConfig, text_lengths=(14, 9), image_at=3, seed=0):
    """Right-padded batch: input_ids [B, L] with one image block per sample, mask, pixels.

    Sample i has `text_lengths[i]` text tokens around its image block.
    """
    g = np.random.default_rng(seed)
    n = cfg.image_seq_length
    lengths = [n + t for t in text_lengths]
    b, length = len(lengths), max(lengths)
    ids = g.integers(3, 100, size=(b, length))
    ids[:, image_at:image_at + n] = cfg.image_token_index
    mask = np.zeros((b, length), np.int64)
    for i, ln in enumerate(lengths):
        mask[i, :ln] = 1
    ids = np.where(mask == 1, ids, 0)
    size = cfg.vision_config.image_size
    pixels = g.standard_normal((b, 3, size, size)).astype(np.float32)
    return ids, mask, pixels
