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


def perturbed(model_class, config, seed: int = 0, scale: float = 0.05):
    """`model_class` built from `config` (eager attention, seeded), every parameter moved
    by `scale` * N(0, 1): default init leaves biases 0 and norms 1, so make every value
    matter. In eval mode."""
    torch.manual_seed(seed)
    model = model_class._from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def checkpoint_init(model, init_std: float) -> None:
    """Weights of a tiny *checkpoint* (a model that must generate sane text): norm scales
    near 1 so activations keep their scale through the stack, matrices N(0, init_std /
    sqrt(fan_in)), vectors N(0, 0.02). Draws from torch's global seed."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, init_std / max(1.0, p.shape[-1] ** 0.5) if p.ndim > 1
                          else 0.02)


def tiny_llava(seed=0, **kw) -> LlavaForConditionalGeneration:
    return perturbed(LlavaForConditionalGeneration, tiny_llava_config(**kw), seed)


def hf_logits(hf, ids, mask, **media) -> np.ndarray:
    """The HF model's logits [B, L, V] on numpy ids/mask [B, L] and `media` arrays
    (pixel_values, image_sizes, pixel_values_videos, ...)."""
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  **{k: torch.tensor(np.asarray(v)) for k, v in media.items()}).logits.numpy()


def assert_valid_rows_close(logits, ref, mask, atol: float = 1e-4) -> None:
    """Our logits [B, L, V] equal the reference's on every valid row of mask [B, L]
    (padding rows are free: HF and we fill them differently)."""
    valid = np.asarray(mask).astype(bool)
    assert logits.shape == ref.shape
    np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=atol, rtol=0)


def hf_greedy_per_sample(hf, ids, mask, max_new_tokens: int, **media) -> np.ndarray:
    """HF `generate`, greedy, `max_new_tokens` (EOS neither stops nor is suppressed, as
    our decode with eos_id=-1), run on each
    right-padded sample of ids/mask [B, L] alone (HF batches need left padding), with
    sample b's slice [b:b+1] of every `media` array (pixel_values, image_sizes, ...).
    Returns the new tokens [B, max_new_tokens]."""
    out = []
    for b in range(len(ids)):
        n = int(mask[b].sum())
        with torch.no_grad():
            ref = hf.generate(input_ids=torch.tensor(ids[b:b + 1, :n]),
                              attention_mask=torch.ones(1, n, dtype=torch.long),
                              **{k: torch.tensor(np.asarray(v)[b:b + 1]) for k, v in media.items()},
                              max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        out.append(ref[0, n:].numpy())
    return np.stack(out)


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
