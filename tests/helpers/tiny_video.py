"""Tiny random HF `VideoLlavaForConditionalGeneration` models and batches."""
from __future__ import annotations

import tempfile

import numpy as np
import torch
from tests.helpers.tiny_hf import checkpoint_init, perturbed
from transformers import (CLIPVisionConfig, LlamaConfig, VideoLlavaConfig,
                          VideoLlavaForConditionalGeneration)

IMAGE_TOKEN, VIDEO_TOKEN = 120, 121


def tiny_video_config(*, image_size=28, patch_size=14, frames=4, kv_heads=2, select="default",
                      vision_layers=3, text_layers=4, vocab=128, tie=False) -> VideoLlavaConfig:
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                          num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                          projection_dim=16)
    tc = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=text_layers, num_attention_heads=4,
                     num_key_value_heads=kv_heads, max_position_embeddings=512,
                     tie_word_embeddings=tie)
    n = (image_size // patch_size) ** 2
    return VideoLlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN,
                            video_token_index=VIDEO_TOKEN, image_seq_length=n + (select == "full"),
                            video_seq_length=frames * (n + 1),
                            vision_feature_select_strategy=select, tie_word_embeddings=tie)


def tiny_video_llava(seed=0, **kw) -> VideoLlavaForConditionalGeneration:
    return perturbed(VideoLlavaForConditionalGeneration, tiny_video_config(**kw), seed)


def jax_video_params(hf):
    """(VideoLlavaConfig, params) through the real path: save_pretrained + load_params."""
    from duet_jax.checkpoints import load_params
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        return load_params(d)


def video_batch(cfg: VideoLlavaConfig, media="video", text_lengths=(14, 9), at=3, seed=0):
    """Right-padded batch with one image or video block per sample: ids, mask, pixels.

    pixels: [B, 3, H, W] for images, [B, F, 3, H, W] for videos.
    """
    g = np.random.default_rng(seed)
    n = cfg.video_seq_length if media == "video" else cfg.image_seq_length
    token = cfg.video_token_index if media == "video" else cfg.image_token_index
    lengths = [n + t for t in text_lengths]
    b, length = len(lengths), max(lengths)
    ids = g.integers(3, 100, size=(b, length))
    ids[:, at:at + n] = token
    mask = np.zeros((b, length), np.int64)
    for i, ln in enumerate(lengths):
        mask[i, :ln] = 1
    ids = np.where(mask == 1, ids, 0)
    size = cfg.vision_config.image_size
    frames = cfg.video_seq_length // ((size // cfg.vision_config.patch_size) ** 2 + 1)
    shape = (b, frames, 3, size, size) if media == "video" else (b, 3, size, size)
    return ids, mask, g.standard_normal(shape).astype(np.float32)


def build_tiny_video_checkpoint(directory: str, *, image_size: int = 28, frames: int = 8,
                                seed: int = 0, init_std: float = 0.5) -> str:
    """An on-disk HF Video-LLaVA dir that `duet_jax.load_llava` loads offline: model,
    the tiny SentencePiece tokenizer (`<image>` 600, `<pad>` 601, `<video>` 602) and a
    `VideoLlavaImageProcessor` for `image_size` px. Weights are redrawn from N(0, std^2)
    so Stage-1 selections are not all ties. Returns `directory`."""
    import os

    from transformers import AutoTokenizer, VideoLlavaImageProcessor

    from tests.helpers.tiny_checkpoint import IMAGE_TOKEN_ID, PAD_TOKEN_ID
    from tests.helpers.tokenizer import build_tiny_tokenizer

    os.makedirs(directory, exist_ok=True)
    build_tiny_tokenizer(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    tok.add_tokens(["<video>"], special_tokens=True)
    tok.save_pretrained(directory)
    video_id = tok.convert_tokens_to_ids("<video>")
    cfg = tiny_video_config(image_size=image_size, frames=frames, vision_layers=2, text_layers=4,
                            vocab=len(tok))
    cfg.image_token_index, cfg.video_token_index = IMAGE_TOKEN_ID, video_id
    cfg.text_config.pad_token_id = PAD_TOKEN_ID
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    checkpoint_init(model, init_std)
    model.save_pretrained(directory)
    VideoLlavaImageProcessor(size={"shortest_edge": image_size},
                             crop_size={"height": image_size, "width": image_size}
                             ).save_pretrained(directory)
    return directory
