"""A tiny random HF `CLIPModel` directory with a real CLIP BPE tokenizer, for tests of the
CLIP text tower CDPruner reads (docs/BASELINES.md §4).

    path = build_tiny_clip(dir, vision_hidden=32)    # config.json, safetensors, tokenizer
"""
from __future__ import annotations

import json
import os

MERGES = ("t h", "th e</w>", "o f</w>", "w h", "wh a", "wha t</w>", "i s</w>", "c o", "co l")


def _bytes_to_unicode() -> list:
    """The 256 printable stand-ins of byte-level BPE (GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in bs]
    return [chr(c) for c in bs] + [chr(256 + n) for n in range(len(extra))]


def write_tokenizer(path: str) -> int:
    """vocab.json + merges.txt of a tiny CLIP BPE; returns the vocab size (EOS is the last id)."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in
                                                    (m.split() for m in MERGES)]
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return len(tokens)


def build_tiny_clip(path: str, vision_hidden: int = 32, eos_legacy: bool = True,
                    max_positions: int = 77, seed: int = 0) -> str:
    """Saves a random CLIPModel (text width 24, 2 layers, projection 16) whose vision width
    is `vision_hidden` (so its visual_projection fits the LLaVA tower) and its tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast
    os.makedirs(path, exist_ok=True)
    vocab = write_tokenizer(path)
    tok = CLIPTokenizerFast(vocab_file=os.path.join(path, "vocab.json"),
                            merges_file=os.path.join(path, "merges.txt"),
                            model_max_length=max_positions)
    tok.save_pretrained(path)
    text = dict(vocab_size=vocab, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=max_positions,
                eos_token_id=2 if eos_legacy else vocab - 1, bos_token_id=vocab - 2,
                pad_token_id=vocab - 1)
    vision = dict(hidden_size=vision_hidden, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    with torch.no_grad():    # non-trivial norms, so a wrong norm cannot pass
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return path
