"""A real Llama-style SentencePiece tokenizer built offline, for tests.

`build_tiny_tokenizer(dir)` trains a tiny SentencePiece BPE model (byte fallback,
dummy prefix, identity normalization: the settings of Llama's tokenizer.model)
on a deterministic generated corpus, wraps it with transformers'
`LlamaTokenizer` and saves it like a llava-hf checkpoint: `<image>` added as a
special token right after the base vocabulary and a `<pad>` pad token after it.

    path = build_tiny_tokenizer(tmp_dir)                 # legacy=True (LLaVA-1.5)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID(tok)
"""
from __future__ import annotations

import io
import json
import os
import random

BASE_VOCAB_SIZE = 600

_WORDS = (
    "a chat between curious user and an artificial intelligence assistant the gives helpful "
    "detailed polite answers to questions ASSISTANT what is in this image picture describe "
    "color shape red green blue yellow white black square circle triangle there are how many dog "
    "cat car tree sky yes no answer question using single word or phrase option letter from given "
    "choices directly caption photo of small large left right top bottom center Is Are What How"
).split()
_PUNCT = ("", ".", "?", ",", ":", "!", "'s")


def tiny_corpus(num_lines: int = 2500, seed: int = 0) -> list:
    """Deterministic English-like lines over `_WORDS`, with digits, punctuation and newlines."""
    rng = random.Random(seed)
    system = ("A chat between a curious user and an artificial intelligence assistant. The "
              "assistant gives helpful, detailed, and polite answers to the user's questions.")
    lines = [system, "\n"]
    for _ in range(num_lines):
        words = [rng.choice(_WORDS) + rng.choice(_PUNCT) for _ in range(rng.randint(2, 14))]
        if rng.random() < 0.2:
            words.insert(rng.randint(0, len(words)), str(rng.randint(0, 999)))
        if rng.random() < 0.3:
            # Like Llama's vocabulary: "USER" is one piece only when glued to what precedes it
            # (as after "</s>"), while " USER" splits into "▁" + "USER".
            words[-1] += rng.choice(".!?") + "USER:"
        lines.append(" ".join(words))
    return lines


def _train_sentencepiece(vocab_size: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2, hard_vocab_limit=False)
    return model.getvalue()


def build_tiny_tokenizer(directory: str, *, legacy: bool = True) -> str:
    """Write a llava-hf-style Llama tokenizer to `directory` and return the path.

    Ids: 0 <unk>, 1 <s>, 2 </s>, bytes <0x00>..<0xFF>, BPE pieces, then
    `<image>` (= BASE_VOCAB_SIZE when the trainer fills the vocabulary) and `<pad>`.
    `legacy` is stored in tokenizer_config.json (transformers 5 defaults it to False).
    """
    from duet_jax.training.random_model import write_llama_tokenizer

    return write_llama_tokenizer(directory, _train_sentencepiece(BASE_VOCAB_SIZE), legacy=legacy)


def image_token_id(tokenizer) -> int:
    """Id of the added `<image>` token of a tokenizer built here."""
    return int(tokenizer.convert_tokens_to_ids("<image>"))
