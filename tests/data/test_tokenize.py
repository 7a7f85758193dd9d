"""Prompt strings, tokenizer_image_token, image-block expansion and LLaVA label masking."""
from __future__ import annotations

import numpy as np
import pytest

from duet_jax.data.conversation import build_eval_prompt, build_training_conversation
from duet_jax.data.tokenize import (IGNORE_INDEX, IMAGE_PLACEHOLDER, encode_training,
                                    expand_image_placeholders, preprocess_v1, tokenize_prompt,
                                    tokenizer_image_token)
from tests.helpers.tokenizer import image_token_id

SPEC_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. The "
               "assistant gives helpful, detailed, and polite answers to the user's questions. "
               "USER: <image>\nIs there a dog in the image?\nAnswer the question using a single "
               "word or phrase. ASSISTANT:")
QUESTION = "Is there a dog in the image?\nAnswer the question using a single word or phrase."
TWO_TURNS = [("human", "What shape is in the image?\n<image>"), ("gpt", "A red circle."),
             ("human", "What color is it?"), ("gpt", "Red")]


def test_eval_prompt_is_the_spec_string():
    assert build_eval_prompt(QUESTION) == SPEC_PROMPT
    assert build_eval_prompt("Q?", has_image=False).endswith(" USER: Q? ASSISTANT:")


def test_training_conversation_string():
    text = build_training_conversation(TWO_TURNS, "vicuna_v1", has_image=True)
    system = SPEC_PROMPT.split(" USER:")[0]
    # <image> moved to the front of its turn (preprocess_multimodal), "</s>" after answers.
    assert text == (system + " USER: <image>\nWhat shape is in the image? ASSISTANT: A red "
                    "circle.</s>USER: What color is it? ASSISTANT: Red</s>")
    plain = build_training_conversation([("human", "x <image>"), ("gpt", "a cat")], "plain",
                                        has_image=True)
    assert plain == "<image>a cat\n"


def test_tokenizer_image_token_structure(tokenizer, tokenizer_dir):
    import sentencepiece as spm

    ids = tokenizer_image_token(SPEC_PROMPT, tokenizer)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(IMAGE_PLACEHOLDER) == 1
    at = ids.index(IMAGE_PLACEHOLDER)
    # Llama: [..., -200, 29871 ("▁"), 13 ("<0x0A>"), ...]; the analogous ids here.
    assert ids[at + 1:at + 3] == tokenizer.convert_tokens_to_ids(["▁", "<0x0A>"])
    # Independent reference: the SentencePiece model itself on each chunk.
    sp = spm.SentencePieceProcessor(model_file=f"{tokenizer_dir}/tokenizer.model")
    head, tail = SPEC_PROMPT.split("<image>")
    assert ids == [sp.bos_id()] + sp.encode(head) + [IMAGE_PLACEHOLDER] + sp.encode(tail)


def test_expansion_count_and_position(tokenizer):
    image_id = image_token_id(tokenizer)
    base = tokenizer_image_token(SPEC_PROMPT, tokenizer)
    ids = tokenize_prompt(SPEC_PROMPT, tokenizer, image_token_index=image_id, image_seq_length=7)
    at = base.index(IMAGE_PLACEHOLDER)
    assert ids.dtype == np.int32 and len(ids) == len(base) + 6
    assert (ids == image_id).sum() == 7 and (ids[at:at + 7] == image_id).all()
    np.testing.assert_array_equal(ids[:at], base[:at])
    np.testing.assert_array_equal(ids[at + 7:], base[at + 1:])
    ids2, labels2 = expand_image_placeholders([5, IMAGE_PLACEHOLDER, 6], [5, 9, 6],
                                              image_token_index=99, image_seq_length=3)
    assert ids2.tolist() == [5, 99, 99, 99, 6] and labels2.tolist() == [5, -100, -100, -100, 6]


def _answer_spans_oracle(text: str, tokenizer):
    """Expected labels from prefix tokenization: each answer runs from just after the
    tokens of the text up to "ASSISTANT:" to the end of the tokens up to its "</s>"."""
    ids = tokenizer_image_token(text, tokenizer)
    expected = np.full(len(ids), IGNORE_INDEX)
    pos = 0
    while (colon := text.find("ASSISTANT:", pos)) >= 0:
        end = text.index("</s>", colon) + len("</s>")
        a = len(tokenizer_image_token(text[:colon + len("ASSISTANT:")], tokenizer))
        b = len(tokenizer_image_token(text[:end], tokenizer))
        expected[a:b] = np.asarray(ids)[a:b]
        pos = end
    return ids, expected


def test_v1_label_masking_two_turns(tokenizer):
    text = build_training_conversation(TWO_TURNS, "vicuna_v1", has_image=True)
    ids, labels, mismatch = preprocess_v1(text, tokenizer, has_image=True, model_max_length=2048)
    assert not mismatch
    oracle_ids, expected = _answer_spans_oracle(text, tokenizer)
    assert ids == oracle_ids
    np.testing.assert_array_equal(labels, expected)
    supervised = np.asarray(ids)[labels != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "A red circle.</s> Red</s>"
    assert labels[0] == IGNORE_INDEX and labels[ids.index(IMAGE_PLACEHOLDER)] == IGNORE_INDEX


def test_nonlegacy_tokenizer_gets_the_same_supervised_text(tokenizer_nonlegacy):
    # No dummy prefix after "</s>": "USER" there is one token shorter than a standalone
    # round's "▁USER" (as in Llama's vocabulary), which LLaVA's `not tokenizer.legacy`
    # correction assumes.
    tok = tokenizer_nonlegacy
    text = build_training_conversation(TWO_TURNS, "vicuna_v1", has_image=True)
    ids, labels, mismatch = preprocess_v1(text, tok, has_image=True, model_max_length=2048)
    assert not mismatch
    after_eos = ids[ids.index(tok.eos_token_id) + 1]
    assert not tok.convert_ids_to_tokens(after_eos).startswith("▁")
    assert tok.decode(np.asarray(ids)[labels != IGNORE_INDEX]) == "A red circle.</s> Red</s>"


class _LegacyClaim:
    """A non-legacy tokenizer that claims legacy=True: LLaVA's round lengths then disagree."""

    def __init__(self, tok):
        self._tok, self.legacy = tok, True

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


def test_round_length_mismatch_masks_everything(tokenizer_nonlegacy):
    tok = _LegacyClaim(tokenizer_nonlegacy)
    text = build_training_conversation(TWO_TURNS, "vicuna_v1", has_image=True)
    _, labels, mismatch = preprocess_v1(text, tok, has_image=True, model_max_length=2048)
    assert mismatch and (labels == IGNORE_INDEX).all()
    # LLaVA skips the check once the summed length reaches model_max_length.
    _, labels, mismatch = preprocess_v1(text, tok, has_image=True, model_max_length=10)
    assert not mismatch and (labels != IGNORE_INDEX).any()


def test_encode_training_image_and_text_only(tokenizer):
    image_id = image_token_id(tokenizer)
    kw = dict(template="vicuna_v1", image_token_index=image_id, image_seq_length=5)
    ex = encode_training(TWO_TURNS, tokenizer, has_image=True, max_length=512, **kw)
    assert ex.has_image and not (ex.truncated or ex.mismatch or ex.image_cut)
    assert (ex.input_ids == image_id).sum() == 5 and (ex.labels[ex.input_ids == image_id] == -100).all()
    assert tokenizer.decode(ex.input_ids[ex.labels != -100]) == "A red circle.</s> Red</s>"
    text_turns = [("human", "What is 2 plus 5?"), ("gpt", "7.")]
    tx = encode_training(text_turns, tokenizer, has_image=False, max_length=512, **kw)
    assert not tx.has_image and not (tx.input_ids == image_id).any()
    assert tx.input_ids.tolist() == tokenizer(build_training_conversation(text_turns)).input_ids
    assert tokenizer.decode(tx.input_ids[tx.labels != -100]) == "7.</s>"


def test_leading_gpt_turn_is_dropped(tokenizer):
    kw = dict(template="vicuna_v1", image_token_index=600, image_seq_length=2, max_length=512,
              has_image=False)
    with_lead = encode_training([("gpt", "ignored"), ("human", "Hi"), ("gpt", "Yes")], tokenizer, **kw)
    without = encode_training([("human", "Hi"), ("gpt", "Yes")], tokenizer, **kw)
    np.testing.assert_array_equal(with_lead.input_ids, without.input_ids)
    np.testing.assert_array_equal(with_lead.labels, without.labels)


def test_plain_template_masks_bos_and_image(tokenizer):
    image_id = image_token_id(tokenizer)
    ex = encode_training([("human", "<image>\nRender a caption."), ("gpt", "a red circle")],
                         tokenizer, template="plain", has_image=True, image_token_index=image_id,
                         image_seq_length=3, max_length=64)
    assert ex.input_ids[0] == tokenizer.bos_token_id and (ex.input_ids[1:4] == image_id).all()
    assert (ex.labels[:4] == -100).all() and (ex.labels[4:] == ex.input_ids[4:]).all()
    assert tokenizer.decode(ex.input_ids[4:]) == "a red circle\n"


@pytest.mark.parametrize("has_image", [True, False])
def test_truncation_keeps_the_prefix(tokenizer, has_image):
    turns = TWO_TURNS if has_image else [("human", "What color is it?"), ("gpt", "Red")] * 2
    kw = dict(template="vicuna_v1", has_image=has_image, image_token_index=600, image_seq_length=4)
    full = encode_training(turns, tokenizer, max_length=1024, **kw)
    cut = len(full.input_ids) - 3
    short = encode_training(turns, tokenizer, max_length=cut, **kw)
    assert short.truncated and not full.truncated and not short.mismatch
    np.testing.assert_array_equal(short.input_ids, full.input_ids[:cut])
    np.testing.assert_array_equal(short.labels, full.labels[:cut])


def test_truncation_through_the_image_block(tokenizer):
    turns = [("human", "<image>\nWhat shape is in the image?"), ("gpt", "A circle.")]
    full = encode_training(turns, tokenizer, template="vicuna_v1", has_image=True,
                           image_token_index=600, image_seq_length=50, max_length=4096)
    start = int(np.argmax(full.input_ids == 600))
    ex = encode_training(turns, tokenizer, template="vicuna_v1", has_image=True,
                         image_token_index=600, image_seq_length=50, max_length=start + 10)
    assert ex.image_cut and ex.truncated and not ex.has_image
    np.testing.assert_array_equal(ex.input_ids, full.input_ids[:start])
    assert (ex.labels == -100).all()


def test_conversation_ending_with_a_human_turn_is_fully_masked(tokenizer):
    # LLaVA: the unfinished last round breaks the round loop -> length mismatch -> all -100.
    turns = [("human", "Hi"), ("gpt", "Yes"), ("human", "And?")]
    ex = encode_training(turns, tokenizer, template="vicuna_v1", has_image=False,
                         image_token_index=600, image_seq_length=2, max_length=512)
    assert ex.mismatch and (ex.labels == IGNORE_INDEX).all()
