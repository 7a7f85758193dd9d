"""A random LLaVA with its own tokenizer and image processor, for runs without a checkpoint.

The tokenizer is a Llama-style SentencePiece BPE model (byte fallback, dummy
prefix, identity normalization, legacy prefix handling: Llama's settings)
trained on the training data's own text, saved as a llava-hf tokenizer with
`<image>` and `<pad>` added after the base vocabulary. Training is
deterministic, so a resumed run rebuilds the same files (or reuses them).
"""
from __future__ import annotations

import io
import json
import os
from typing import Iterable, List

from duet_jax.data.conversation import VICUNA_V1_SYSTEM, build_training_conversation
from duet_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from duet_jax.training.config import RandomModelConfig

TOKENIZER_DONE = "duet_jax_tokenizer.json"     # written last: marks a complete directory


def corpus_from_records(records: Iterable[dict]) -> List[str]:
    """Lines the tokenizer learns from: the template system prompt and every rendered sample."""
    lines = [VICUNA_V1_SYSTEM]
    for rec in records:
        turns = [(t["from"], t["value"]) for t in rec["conversations"]]
        text = build_training_conversation(turns, "vicuna_v1", has_image=False)
        lines.extend(part for part in text.replace("<image>", " ").split("</s>") if part.strip())
    return lines


def _train_sentencepiece(lines: List[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2, hard_vocab_limit=False)
    return model.getvalue()


def build_tokenizer(directory: str, lines: List[str], vocab_size: int, image_size: int) -> str:
    """Write tokenizer + CLIP image processor files to `directory` (reused when complete)."""
    from transformers import CLIPImageProcessorPil

    if os.path.isfile(os.path.join(directory, TOKENIZER_DONE)):
        return directory
    os.makedirs(directory, exist_ok=True)
    write_llama_tokenizer(directory, _train_sentencepiece(lines, vocab_size), legacy=True)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}
                          ).save_pretrained(directory)
    with open(os.path.join(directory, TOKENIZER_DONE), "w") as f:
        json.dump({"vocab_size": vocab_size}, f)
    return directory


def write_llama_tokenizer(directory: str, sentencepiece_model: bytes, *, legacy: bool = True) -> str:
    """A llava-hf-style Llama tokenizer from a SentencePiece model: `<image>` and `<pad>`
    added, right padding, BOS on, and `legacy` kept in tokenizer_config.json."""
    from transformers import AddedToken, LlamaTokenizer

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(sentencepiece_model)
    tok = LlamaTokenizer.from_pretrained(directory, legacy=legacy, add_bos_token=True,
                                         add_eos_token=False)
    tok.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = "right"
    tok.save_pretrained(directory)
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    # save_pretrained drops these init kwargs; without them a reload is non-legacy.
    config.update(legacy=legacy, add_bos_token=True, add_eos_token=False)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    return directory


def random_llava_config(sizes: RandomModelConfig, *, vocab_size: int, image_token_index: int,
                        pad_token_id=None) -> LlavaConfig:
    """LlavaConfig of a random model: CLIP-style tower (quick_gelu) + Llama LM."""
    if sizes.image_size % sizes.patch_size:
        raise ValueError(f"model.random.image_size={sizes.image_size} must be a multiple of "
                         f"patch_size={sizes.patch_size}")
    vision = VisionConfig(hidden_size=sizes.vision_hidden_size,
                          intermediate_size=sizes.vision_intermediate_size,
                          num_hidden_layers=sizes.vision_layers,
                          num_attention_heads=sizes.vision_heads, image_size=sizes.image_size,
                          patch_size=sizes.patch_size)
    text = TextConfig(vocab_size=vocab_size, hidden_size=sizes.text_hidden_size,
                      intermediate_size=sizes.text_intermediate_size,
                      num_hidden_layers=sizes.text_layers, num_attention_heads=sizes.text_heads,
                      num_key_value_heads=sizes.text_kv_heads, max_position_embeddings=4096,
                      pad_token_id=pad_token_id)
    return LlavaConfig(vision=vision, text=text, image_token_index=image_token_index,
                       image_seq_length=vision.num_patches)
