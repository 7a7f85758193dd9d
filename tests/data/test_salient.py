"""Salient question words and their prompt tokens (docs/ALGORITHM.md §3.9, offline path)."""
import numpy as np

from duet_jax.data.conversation import build_eval_prompt
from duet_jax.data.salient import salient_char_spans, salient_token_mask, salient_words
from duet_jax.data.tokenize import tokenize_prompt


def test_salient_words_keep_question_words_and_punctuation_drop_stopwords_numbers():
    words = salient_words("What colour is the big dog in the 2 pictures? Answer: the dog!")
    assert words == ["what", "colour", "big", "dog", "pictures", "?", "answer", ":", "!"]
    assert salient_words("Is it there") == []          # only stopwords


def test_salient_spans_are_inside_the_question():
    text = "\nIs the red box on the left?\nAnswer the question using a single word."
    spans = salient_char_spans(text, "Is the red box on the left?")
    assert [text[a:b] for a, b in spans] == ["red", "box", "left", "?"]


def test_salient_token_mask_marks_overlapping_tokens(tokenizer):
    question = "Is the red circle near the top?"
    prompt = build_eval_prompt(question)
    ids = tokenize_prompt(prompt, tokenizer, image_token_index=600, image_seq_length=4)
    offset = int(np.argmax(ids == 600)) + 4
    after = prompt.split("<image>", 1)[1]
    mask = salient_token_mask(after, question, tokenizer, offset, len(ids) + 3)
    marked = tokenizer.decode(ids[mask[:len(ids)]]).replace(" ", "")
    for word in ("red", "circle", "near", "top", "?"):
        assert word in marked
    assert "the" not in marked.replace("near", "")   # stopwords stay unmarked
    assert not mask[:offset].any() and not mask[len(ids):].any()
