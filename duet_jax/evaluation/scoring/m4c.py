"""The m4c / EvalAI VQA answer normaliser used by TextVQA (docs/EVAL.md §2), quirks kept.

Also the normaliser of the video lexical proxy (docs/EVAL.md §7).
"""
from __future__ import annotations

import re

# The standard VQA-eval contraction table, restricted to the entries that can fire
# after lowercasing (docs/EVAL.md §2). "somebody'd -> somebodyd" is reversed upstream; kept.
_CONTRACTION_PAIRS = """
aint ain't; arent aren't; cant can't; couldve could've; couldnt couldn't;
couldn'tve couldn't've; couldnt've couldn't've; didnt didn't; doesnt doesn't; dont don't;
hadnt hadn't; hadnt've hadn't've; hadn'tve hadn't've; hasnt hasn't; havent haven't;
hed he'd; hed've he'd've; he'dve he'd've; hes he's; howd how'd; howll how'll; hows how's;
isnt isn't; itd it'd; itd've it'd've; it'dve it'd've; itll it'll; maam ma'am;
mightnt mightn't; mightnt've mightn't've; mightn'tve mightn't've; mightve might've;
mustnt mustn't; mustve must've; neednt needn't; notve not've; oclock o'clock;
oughtnt oughtn't; 'ows'at 'ow's'at; shant shan't; shed've she'd've; she'dve she'd've;
shouldve should've; shouldnt shouldn't; shouldnt've shouldn't've; shouldn'tve shouldn't've;
somebody'd somebodyd; somebodyd've somebody'd've; somebody'dve somebody'd've;
somebodyll somebody'll; somebodys somebody's; someoned someone'd; someoned've someone'd've;
someone'dve someone'd've; someonell someone'll; someones someone's; somethingd something'd;
somethingd've something'd've; something'dve something'd've; somethingll something'll;
thats that's; thered there'd; thered've there'd've; there'dve there'd've; therere there're;
theres there's; theyd they'd; theyd've they'd've; they'dve they'd've; theyll they'll;
theyre they're; theyve they've; twas 'twas; wasnt wasn't; wed've we'd've; we'dve we'd've;
weve we've; werent weren't; whatll what'll; whatre what're; whats what's; whatve what've;
whens when's; whered where'd; wheres where's; whereve where've; whod who'd;
whod've who'd've; who'dve who'd've; wholl who'll; whos who's; whove who've; whyll why'll;
whyre why're; whys why's; wont won't; wouldve would've; wouldnt wouldn't;
wouldnt've wouldn't've; wouldn'tve wouldn't've; yall y'all; yall'll y'all'll;
y'allll y'all'll; yall'd've y'all'd've; y'alld've y'all'd've; y'all'dve y'all'd've;
youd you'd; youd've you'd've; you'dve you'd've; youll you'll; youre you're; youve you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split() for pair in _CONTRACTION_PAIRS.replace("\n", " ").split(";"))

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">",
               "<", "@", "`", ",", "?", "!")
# A period not followed by a digit. The official code passes re.UNICODE (== 32) where
# `count` goes, so at most the first 32 such periods are deleted.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_COUNT_QUIRK = int(re.UNICODE)


def normalize_answer(answer: str) -> str:
    """docs/EVAL.md §2 steps 1-5, applied identically to predictions and GT answers."""
    # Step 1: the word tokenizer.
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    # Step 2.
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # Step 3: the delete-or-space test reads the step-2 string, the edits accumulate.
    # (The "digit,digit" test never fires: step 1 removed every comma.)
    original = text
    for p in PUNCTUATION:
        if p + " " in original or " " + p in original:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    # Step 4.
    text = _PERIOD.sub("", text, count=_PERIOD_COUNT_QUIRK)
    # Step 5: numbers, articles, then contractions on the surviving tokens.
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)
