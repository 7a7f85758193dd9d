"""Questions about a :class:`~duet_jax.miniature.scenes.Scene`, with their answers.

Three families, mirroring the paper's benchmarks (docs/EVAL.md §1-3):

* POPE-style existence: "Is there a triangle in the image?", "Is there a
  letter K in the image?" Yes/No, over the 12 object categories (4 shapes, 8
  letters), as POPE asks about COCO categories. The absent object of a "No"
  question is drawn per POPE split: ``random`` (any absent category),
  ``popular`` (an absent shape: shapes are the frequent categories, as POPE
  takes the most frequent COCO objects) and ``adversarial`` (an absent
  look-alike of an object in the picture, POPE's co-occurrence stand-in).
* GQA-style short answers: colour, shape, count and left/right questions.
* TextVQA-style reading: "What letter is written in blue?" with the two
  letters of the picture as the "Reference OCR token" hint (sorted), so the
  model has to find the one with the asked colour and read it.

Every function takes a `random.Random` and returns None when the scene
cannot carry that question (e.g. no letters).
"""
from __future__ import annotations

import random
from typing import List, NamedTuple, Optional

from duet_jax.miniature.scenes import COLORS, SHAPES, Scene

SHORT = "Answer the question using a single word or phrase."
POPE_SPLITS = ("adversarial", "popular", "random")
GQA_KINDS = ("colour", "shape", "count", "position")
MIN_DX = 6          # left/right questions need centres at least this far apart (pixels)


class QA(NamedTuple):
    kind: str           # pope | colour | shape | count | position | read
    question: str       # the question line (no suffix)
    answer: str
    text: str           # the full user text after "<image>\n" (suffix / OCR line included)
    category: str = ""  # POPE split, or the GQA kind


def _short(question: str) -> str:
    return f"{question}\n{SHORT}"


# Look-alike categories, for the adversarial split (similar outline / strokes).
LOOKALIKE = {"circle": ("diamond",), "square": ("diamond",), "diamond": ("square", "triangle"),
             "triangle": ("diamond",), "letter A": ("letter R",), "letter R": ("letter A",),
             "letter E": ("letter H",), "letter H": ("letter E", "letter K"),
             "letter K": ("letter X", "letter H"), "letter X": ("letter K",),
             "letter M": ("letter T",), "letter T": ("letter M",)}
OBJECTS = tuple(LOOKALIKE)      # the 12 POPE categories


def present_objects(scene: Scene) -> list:
    """The POPE categories in the picture, in a fixed order."""
    names = {t.kind for t in scene.shapes} | {f"letter {t.letter}" for t in scene.letters}
    return [o for o in OBJECTS if o in names]


def is_letter(category: str) -> bool:
    return category.startswith("letter")


def absent_object(scene: Scene, split: str, rng: random.Random,
                  letter: Optional[bool] = None) -> str:
    """A category not in the scene, drawn as POPE split `split` draws negatives;
    `letter` True / False keeps to letters / shapes.

    Falls back to the next easier split when the scene cannot host the harder one
    (adversarial -> popular -> random).
    """
    present = present_objects(scene)
    absent = [o for o in OBJECTS if o not in present and letter in (None, is_letter(o))]
    alike = {a for o in present for a in LOOKALIKE[o]}
    pools = {"adversarial": [o for o in absent if o in alike],
             "popular": [o for o in absent if not is_letter(o)],
             "random": absent}
    order = POPE_SPLITS[POPE_SPLITS.index(split):]
    for name in order:
        if pools[name]:
            return rng.choice(pools[name])
    raise ValueError("a scene with every object category has no absent object")


def pope_question(scene: Scene, rng: random.Random, positive: bool, split: str,
                  letter: Optional[bool] = None) -> Optional[QA]:
    """An existence question (`letter` True / False: about a letter / a shape)."""
    everything = present_objects(scene)
    present = [o for o in everything if letter in (None, is_letter(o))]
    absent = [o for o in OBJECTS if o not in everything and letter in (None, is_letter(o))]
    if not everything or not (present if positive else absent):
        return None
    thing = rng.choice(present) if positive else absent_object(scene, split, rng, letter)
    question = f"Is there a {thing} in the image?"
    return QA("pope", question, "Yes" if positive else "No", _short(question), split)


def existence_questions(scene: Scene, rng: random.Random, per_kind: int = 2) -> List[QA]:
    """Training Yes/No questions with as many Yes as No for shapes and for letters alike.

    Drawing a present object for Yes and an absent one for No (POPE's construction)
    leaves the category a strong prior in training: scenes hold 2-4 shapes of 4 kinds
    but at most 2 of 8 letters, so a shape question is mostly Yes and a letter one
    mostly No, and a small LM learns that prior and stops looking (it answered every
    shape Yes and every letter No). So shapes come in Yes/No pairs, and a scene with
    letters asks about both (Yes) and one absent letter (No) while one without asks
    about one absent letter: with letters in half the scenes, 2 Yes to 2 No per two scenes.
    """
    out = []
    rounds = per_kind // 2 if scene.letters else per_kind
    for _ in range(rounds):
        out.append(pope_question(scene, rng, True, "random", letter=False))
        out.append(pope_question(scene, rng, False, rng.choice(POPE_SPLITS), letter=False))
    for thing in scene.letters:
        question = f"Is there a letter {thing.letter} in the image?"
        out.append(QA("pope", question, "Yes", _short(question), "random"))
    out.append(pope_question(scene, rng, False, rng.choice(POPE_SPLITS), letter=True))
    return [qa for qa in out if qa is not None]


def colour_question(scene: Scene, rng: random.Random) -> Optional[QA]:
    unique = [t for t in scene.shapes if scene.count(t.kind) == 1]
    if not unique:
        return None
    thing = rng.choice(unique)
    question = f"What colour is the {thing.kind}?"
    return QA("colour", question, thing.color, _short(question), "colour")


def shape_question(scene: Scene, rng: random.Random) -> Optional[QA]:
    unique = [t for t in scene.shapes if sum(u.color == t.color for u in scene.shapes) == 1]
    if not unique:
        return None
    thing = rng.choice(unique)
    question = f"Which shape is {thing.color}?"
    return QA("shape", question, thing.kind, _short(question), "shape")


def count_question(scene: Scene, rng: random.Random) -> Optional[QA]:
    present = sorted({t.kind for t in scene.shapes})
    # Mostly shapes that are there; sometimes one that is not (answer 0).
    shape = rng.choice(present) if present and rng.random() < 0.85 else rng.choice(SHAPES)
    question = f"How many {shape}s are there?"
    return QA("count", question, str(scene.count(shape)), _short(question), "count")


def position_question(scene: Scene, rng: random.Random) -> Optional[QA]:
    unique = [t for t in scene.shapes
              if sum(u.kind == t.kind and u.color == t.color for u in scene.shapes) == 1]
    pairs = [(a, b) for a in unique for b in unique
             if a is not b and abs(a.center_x - b.center_x) >= MIN_DX]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    question = f"Is the {a.color} {a.kind} to the left or right of the {b.color} {b.kind}?"
    answer = "left" if a.center_x < b.center_x else "right"
    return QA("position", question, answer, _short(question), "position")


def read_question(scene: Scene, rng: random.Random) -> Optional[QA]:
    if len(scene.letters) < 2:
        return None
    thing = rng.choice(scene.letters)
    ocr = ", ".join(sorted(t.letter for t in scene.letters))
    question = f"What letter is written in {thing.color}?"
    # TextVQA's three-line text: question, OCR hint, answer-format suffix (docs/EVAL.md §2).
    return QA("read", question, thing.letter,
              f"{question}\nReference OCR token: {ocr}\n{SHORT}", "read")


def caption(scene: Scene, rng: Optional[random.Random] = None) -> QA:
    """A LLaVA-pretraining-style short description, objects from left to right; many
    supervised tokens per image, every one about the picture (drawn without `rng`,
    which it takes as every family's maker does)."""
    parts = []
    for t in sorted(scene.objects, key=lambda t: (t.center_x, t.box[1])):
        if t.kind == "letter":
            parts.append(f"the {t.color} letter {t.letter}")
        else:
            parts.append(f"a {'small ' if t.small else ''}{t.color} {t.kind}")
    question = "Describe the image briefly."
    return QA("caption", question, ", ".join(parts) + ".", question, "caption")


GQA_MAKERS = {"colour": colour_question, "shape": shape_question, "count": count_question,
              "position": position_question}


def training_questions(scene: Scene, rng: random.Random, per_family: int = 2) -> List[QA]:
    """Up to `per_family` questions of each family the scene can carry (existence:
    `existence_questions`), duplicates removed: one multi-turn LLaVA
    record: a first turn of any family but the caption, then existence, reading,
    GQA, and the caption last (shuffled inside each group). The 576 image tokens dominate a sample's cost, so many
    answers per image make training far cheaper per supervised answer."""
    out = existence_questions(scene, rng, per_family)
    for _ in range(per_family):
        out += [make(scene, rng) for make in GQA_MAKERS.values()]
        out.append(read_question(scene, rng))
    out.append(caption(scene, rng))
    unique = {}
    for qa in out:
        if qa is not None:
            unique.setdefault(qa.question, qa)
    out = list(unique.values())
    rng.shuffle(out)
    # Turn order inside one training record. A later turn can be answered by copying
    # an earlier one instead of reading the picture ("What colour is the square?
    # blue" gives away that there is a square, a TextVQA OCR line names the
    # letters, the caption names everything), and a small LM learns that shortcut
    # first. So after a first turn of any family (the evaluation asks every family
    # as a first turn), the existence questions come first, then the reading,
    # then GQA, and the caption, which lists everything, last.
    group = {"pope": 0, "read": 1, "caption": 3}
    first = next(i for i, qa in enumerate(out) if qa.kind != "caption")
    rest = out[:first] + out[first + 1:]
    return [out[first]] + sorted(rest, key=lambda qa: group.get(qa.kind, 2))


def follow_up_text(qa: QA) -> str:
    """A later turn's text: the question (and OCR hint) without the answer-format suffix,
    as in LLaVA's multi-turn VQA records; the first turn keeps the eval prompt exactly."""
    return qa.text[:-len(SHORT) - 1] if qa.text.endswith("\n" + SHORT) else qa.text


def _conversation(qas: List[QA], opening: str) -> list:
    turns = []
    for i, qa in enumerate(qas):
        value = opening + qa.text if i == 0 else follow_up_text(qa)
        turns.append({"from": "human", "value": value})
        turns.append({"from": "gpt", "value": qa.answer})
    return turns


def text_record(record_id: str, scene_caption: str, qas: List[QA]) -> dict:
    """The same conversation with the picture given as its caption, in text: the
    text-only stage teaches the LM the questions and the answer format first, so the
    image stage can spend its steps on reading the picture."""
    return {"id": record_id, "conversations": _conversation(qas, caption_opening(scene_caption))}


def caption_opening(scene_caption: str) -> str:
    """What stands in for `<image>\n` in the text-only stage: the scene's caption."""
    return f"Scene: {scene_caption}\n"


def llava_record(record_id: str, image: str, qas: List[QA]) -> dict:
    """LLaVA instruction-tuning record: `<image>` opens the first human turn."""
    return {"id": record_id, "image": image, "conversations": _conversation(qas, "<image>\n")}
