"""Salient question tokens for the `salient` Stage-2 query set (docs/ALGORITHM.md §3.9).

The offline-safe project path: split the question with `[A-Za-z0-9']+|[?!:]`,
keep question words and `? ! :`, drop English stopwords (NLTK's list,
vendored) and pure numbers, keep the rest, de-duplicate; then mark every
prompt token whose character span overlaps a kept word inside the question.
The caller adds the last prompt token. No downloads, no spaCy.
"""
from __future__ import annotations

import re
from typing import List

import numpy as np

QUESTION_WORDS = frozenset("who what where when why how which whom whose".split())
PUNCT = frozenset("?!:")
# NLTK's English stopword list (nltk_data corpora/stopwords/english, 179 words).
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
yourselves he him his himself she she's her hers herself it it's its itself they them their
theirs themselves what which who whom this that that'll these those am is are was were be been
being have has had having do does did doing a an the and but if or because as until while of
at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there when where why how all any
both each few more most other some such no nor not only own same so than too very s t can
will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't
didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't
mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't
wouldn wouldn't""".split())
_WORD = re.compile(r"[A-Za-z0-9']+|[?!:]")


def salient_words(question: str) -> List[str]:
    """Lower-cased salient words of a question, first occurrence order."""
    out: List[str] = []
    for word in _WORD.findall(question):
        w = word.lower()
        keep = w in QUESTION_WORDS or w in PUNCT or not (w in STOPWORDS or w.isdigit())
        if keep and w not in out:
            out.append(w)
    return out


def salient_char_spans(text: str, question: str) -> List[tuple]:
    """Character spans in `text` of the salient words of `question` (which must occur in it)."""
    start = text.find(question)
    if start < 0:
        raise ValueError("the question does not occur in the prompt text; pass the user "
                         "question exactly as it appears in the prompt")
    words = set(salient_words(question))
    return [(start + m.start(), start + m.end()) for m in _WORD.finditer(question)
            if m.group().lower() in words]


def salient_token_mask(chunk: str, question: str, tokenizer, offset: int, length: int) -> np.ndarray:
    """[length] bool over the ids of a prompt: True at tokens of `chunk` (the prompt text
    after `<image>`, tokenised without BOS starting at id index `offset`) that overlap a
    salient word of `question`."""
    enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
    spans = salient_char_spans(chunk, question)
    mask = np.zeros(length, bool)
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        if any(a < e and s < b for s, e in spans) and offset + j < length:
            mask[offset + j] = True
    return mask

