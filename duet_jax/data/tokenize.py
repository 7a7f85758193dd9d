"""Tokenization of LLaVA prompts and training conversations.

Two layers:

* LLaVA semantics with a single placeholder id per image (`IMAGE_PLACEHOLDER`,
  -200): `tokenizer_image_token`, `preprocess_v1`, `preprocess_plain`,
  reproduced from LLaVA-1.5 (including its label-masking arithmetic).
* The llava-hf convention that the models consume (docs/API.md §3): each
  placeholder becomes `image_seq_length` consecutive `image_token_index` ids
  (`expand_image_placeholders`), labels -100 on the block.

`tokenizer` is any HF tokenizer object (called as `tokenizer(text).input_ids`);
nothing here imports torch or JAX (`IGNORE_INDEX` comes from `duet_jax.labels`, its one home).
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from duet_jax.data.conversation import IMAGE_TOKEN, build_training_conversation, get_template
from duet_jax.labels import IGNORE_INDEX

IMAGE_PLACEHOLDER = -200     # LLaVA's IMAGE_TOKEN_INDEX


# A directory holds a tokenizer when it has one of these (vocab.json: GPT-2 style BPE, Qwen).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_tokenizer(directory: str):
    """transformers' AutoTokenizer of a model directory (offline). A directory without
    tokenizer files raises FileNotFoundError saying so (transformers' own error there
    suggests installing a package that is installed)."""
    if not any(os.path.isfile(os.path.join(directory, name)) for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files in {directory} (expected tokenizer.json or "
                                "tokenizer.model); copy them from the source checkpoint")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer(text).input_ids)


def tokenizer_image_token(prompt: str, tokenizer,
                          image_token_index: int = IMAGE_PLACEHOLDER) -> List[int]:
    """LLaVA's `tokenizer_image_token`: one `image_token_index` per `<image>`.

    Split on the literal `<image>`, tokenize every chunk on its own (so each
    chunk gets the tokenizer's BOS and SentencePiece dummy prefix), keep the
    first chunk's BOS and drop the first token of every chunk when the first
    chunk starts with BOS. A chunk starting with "\\n" therefore yields
    `["▁", "<0x0A>", ...]` after the placeholder (ids 29871, 13 for Llama).
    """
    chunks = [_ids(tokenizer, chunk) for chunk in prompt.split(IMAGE_TOKEN)]
    offset = 0
    out: List[int] = []
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        out.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            out.append(image_token_index)   # the separator [idx]*(offset+1), sliced by offset
        out.extend(chunk[offset:])
    return out


def expand_image_placeholders(ids: Sequence[int], labels: Optional[Sequence[int]], *,
                              image_token_index: int, image_seq_length: int,
                              placeholder: int = IMAGE_PLACEHOLDER):
    """Replace each placeholder by `image_seq_length` copies of `image_token_index`.

    Returns `(ids [n'], labels [n'] or None)` as int32 numpy arrays; the image
    block gets label -100 (LLaVA's `prepare_inputs_labels_for_multimodal`).
    """
    ids = np.asarray(ids, np.int64)
    where = ids == placeholder
    repeats = np.where(where, image_seq_length, 1)
    out_ids = np.repeat(np.where(where, image_token_index, ids), repeats).astype(np.int32)
    if labels is None:
        return out_ids, None
    lab = np.asarray(labels, np.int64)
    out_labels = np.repeat(np.where(where, IGNORE_INDEX, lab), repeats).astype(np.int32)
    return out_ids, out_labels


def tokenize_prompt(prompt: str, tokenizer, *, image_token_index: int,
                    image_seq_length: int) -> np.ndarray:
    """Evaluation prompt -> input ids [n] int32 in the llava-hf convention."""
    ids = tokenizer_image_token(prompt, tokenizer)
    return expand_image_placeholders(ids, None, image_token_index=image_token_index,
                                     image_seq_length=image_seq_length)[0]


def right_pad(sequences: Sequence[np.ndarray], length: int, pad_value: int) -> Tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D int sequences to `[B, length]`; returns (values, attention_mask), both int32."""
    values = np.full((len(sequences), length), pad_value, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for b, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"sequence {b} has {len(seq)} tokens > padded length {length}; "
                             f"truncate first or raise the length")
        values[b, :len(seq)] = seq
        mask[b, :len(seq)] = 1
    return values, mask


# ----------------------------------------------------------------------------- training


def _legacy(tokenizer) -> bool:
    # transformers 4.x defaulted `legacy` to None (= legacy behaviour).
    value = getattr(tokenizer, "legacy", True)
    return True if value is None else bool(value)


def preprocess_v1(conversation: str, tokenizer, *, has_image: bool,
                  model_max_length: int) -> Tuple[List[int], np.ndarray, bool]:
    """LLaVA-1.5 `preprocess_v1` label masking for one rendered vicuna_v1 string.

    Returns `(ids with placeholders, labels [n] int64, mismatch)`. Labels are -100
    on BOS, on each round's instruction ("SYSTEM USER: ... ASSISTANT:") and after
    the last complete round; the answers and their "</s>" are supervised. Round
    lengths come from tokenizing each "</s>"-separated round on its own, as LLaVA
    does; with a non-legacy tokenizer every round after the first is one token
    shorter in context (no dummy prefix after "</s>"), LLaVA's
    `not tokenizer.legacy` correction (tokenizers >= 0.14). If the summed round
    lengths disagree with the real length (and are below `model_max_length`),
    LLaVA masks the whole sample and warns: `mismatch` is then True.
    `model_max_length` is LLaVA's `tokenizer.model_max_length` (text units: the
    placeholder counts as one token).
    """
    conv = get_template("vicuna_v1")
    if has_image:
        ids = tokenizer_image_token(conversation, tokenizer)
        count = lambda text: len(tokenizer_image_token(text, tokenizer))  # noqa: E731
    else:
        # LLaVA tokenizes text-only samples with truncation=True at model_max_length.
        ids = _ids(tokenizer, conversation)[:model_max_length]
        count = lambda text: len(_ids(tokenizer, text))  # noqa: E731
    labels = np.asarray(ids, np.int64).copy()
    # LLaVA sets pad_token = unk_token for v1 and counts non-pad tokens.
    total_len = len(ids) - ids.count(tokenizer.unk_token_id)
    legacy = _legacy(tokenizer)

    sep = conv.sep + conv.roles[1] + ": "
    cur_len = 1
    labels[:cur_len] = IGNORE_INDEX
    for i, rou in enumerate(conversation.split(conv.sep2)):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = count(rou)
        # -2: the BOS of the standalone tokenization and the trailing "▁" of "ASSISTANT: ".
        instruction_len = count(parts[0]) - 2
        if i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        if instruction_len > 0:
            labels[cur_len:cur_len + instruction_len] = IGNORE_INDEX
        cur_len += round_len
    labels[cur_len:] = IGNORE_INDEX
    mismatch = cur_len < model_max_length and cur_len != total_len
    if mismatch:
        labels[:] = IGNORE_INDEX
    return ids, labels, mismatch


def preprocess_plain(conversation: str, tokenizer) -> Tuple[List[int], np.ndarray]:
    """LLaVA `preprocess_plain`: "<image>" + caption + "\\n"; only the caption is supervised."""
    ids = tokenizer_image_token(conversation, tokenizer)
    labels = np.asarray(ids, np.int64).copy()
    labels[:len(tokenizer_image_token(IMAGE_TOKEN, tokenizer))] = IGNORE_INDEX
    return ids, labels


@dataclasses.dataclass(frozen=True)
class TrainingExample:
    """One tokenized training sample in the llava-hf convention.

    input_ids, labels: [n] int32 with n <= max_length; has_image says whether
    the sequence holds an image block (False after `image_cut`).
    """
    input_ids: np.ndarray
    labels: np.ndarray
    has_image: bool
    truncated: bool      # the expanded sequence was longer than max_length
    mismatch: bool       # LLaVA's tokenization-mismatch rule masked every label
    image_cut: bool      # truncation would have split the image block (see encode_training)


def encode_training(turns: Sequence[Tuple[str, str]], tokenizer, *, template: str,
                    has_image: bool, image_token_index: int, image_seq_length: int,
                    max_length: int) -> TrainingExample:
    """Tokenize one LLaVA-JSON conversation and mask its labels, then expand and truncate.

    `turns`: `(from, value)` pairs (validated by the caller). LLaVA truncates the
    placeholder sequence to `model_max_length` in its collator and the expanded
    sequence again in the model; keeping the first `max_length` tokens of the
    expanded sequence gives the same result whenever the image block fits.
    If truncation would cut through the image block (only when `max_length` is
    below prefix + image_seq_length), LLaVA would feed a partial image; the
    llava-hf convention cannot express that, so the sample keeps only the text
    before the image, has_image=False and all labels -100 (`image_cut`).
    """
    conv = get_template(template)
    text = build_training_conversation(turns, template, has_image=has_image)
    mismatch = False
    if conv.style == "plain":
        ids, labels = preprocess_plain(text, tokenizer)
    else:
        ids, labels, mismatch = preprocess_v1(text, tokenizer, has_image=has_image,
                                              model_max_length=max_length)
    # Text-only ids arrive already truncated; re-count only when they hit the limit.
    text_truncated = (not has_image and len(ids) == max_length
                      and len(_ids(tokenizer, text)) > max_length)
    ids, labels = expand_image_placeholders(ids, labels, image_token_index=image_token_index,
                                            image_seq_length=image_seq_length)
    truncated = len(ids) > max_length or text_truncated
    image_cut = False
    if truncated and has_image:
        start = int(np.argmax(ids == image_token_index))
        if start + image_seq_length > max_length:
            image_cut = True
            ids, labels = ids[:start], np.full(start, IGNORE_INDEX, np.int32)
    return TrainingExample(input_ids=ids[:max_length], labels=labels[:max_length],
                           has_image=has_image and not image_cut, truncated=truncated,
                           mismatch=mismatch, image_cut=image_cut)
