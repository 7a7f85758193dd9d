"""TextVQA (docs/EVAL.md §2, §10): m4c normalisation quirks, soft score, question recovery."""
import pytest

from duet_jax.evaluation.scoring import ScoreError, textvqa
from duet_jax.evaluation.scoring.m4c import CONTRACTIONS, normalize_answer

SHORT = "Answer the question using a single word or phrase."

# docs/EVAL.md §2 example table (input -> normalized).
NORMALIZATION_TABLE = [
    ("Two", "2"), ("one-way", "1 way"), ("Coca-Cola.", "coca cola"), ("(a)", ""), ("a/b", "b"),
    ("N/A", "n"), ("1,000", "1000"), ("1,2", "12"), ("$5.99", "$5.99"), ("it's", "it 's"),
    ("dont", "don't"), ("Im", "im"), ("the the", ""),
]


@pytest.mark.parametrize("raw, expected", NORMALIZATION_TABLE)
def test_normalization_table(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_test_reads_the_step2_string():
    # '(' becomes a space, creating " -" -- but the '-' test looks at the original
    # string, which has no "- " / " -", so '-' is also replaced by a space (not deleted).
    assert normalize_answer("x(-y z-w") == "x y z w"
    # A space next to the character in the original string: delete every occurrence.
    assert normalize_answer("x - y/z") == "x y z"
    assert normalize_answer("a-b (c)") == "b c"
    assert normalize_answer("mc-donald -x") == "mcdonald x"


def test_period_rules_and_32_cap():
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer(".5") == ".5"
    assert normalize_answer("U.S.A.") == "usa"
    # 40 deletable periods: only the first 32 go (re.UNICODE passed as count).
    assert normalize_answer("x." * 40) == "x" * 32 + "x." * 8
    assert normalize_answer("x." * 32) == "x" * 32


def test_number_words_articles_and_untouched_characters():
    words = "none zero one two three four five six seven eight nine ten"
    assert normalize_answer(words) == "0 0 1 2 3 4 5 6 7 8 9 10"
    assert normalize_answer("An apple, THE pear") == "apple pear"
    assert normalize_answer("50% & #1 * a:b ~^|") == "50% & #1 * a:b ~^|"
    assert normalize_answer("café's") == "café 's"
    assert normalize_answer("line\nbreak\ttab") == "line break tab"
    assert normalize_answer("what?") == "what"


def test_contraction_table_contents():
    # Entries that can fire after lowercasing: no capitals, no "'s" (docs/EVAL.md §2).
    assert len(CONTRACTIONS) == 112
    assert all(k == k.lower() and "'s" not in k for k in CONTRACTIONS)
    spot = {"aint": "ain't", "couldn'tve": "couldn't've", "'ows'at": "'ow's'at", "twas": "'twas",
            "y'allll": "y'all'll", "youve": "you've", "somebody'd": "somebodyd"}  # reversed, kept
    assert {k: CONTRACTIONS[k] for k in spot} == spot


def test_every_contraction_fires_through_the_pipeline():
    for key, value in CONTRACTIONS.items():
        assert normalize_answer(key) == value, key


# c = number of GT answers equal to the prediction -> score (docs/EVAL.md §2 table).
@pytest.mark.parametrize("c, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                         (7, 1.0), (10, 1.0)])
def test_soft_score_table(c, expected):
    gts = ["cat"] * c + ["dog"] * (10 - c)
    assert textvqa.soft_accuracy("Cat.", gts) == pytest.approx(expected)


def test_soft_score_matches_formula_exactly():
    gts = ["cat"] * 3 + ["dog"] * 7
    per_j = [min(1, float(2) / 3)] * 3 + [min(1, float(3) / 3)] * 7
    assert textvqa.soft_accuracy("cat", gts) == sum(per_j) / 10


def test_empty_prediction_can_score():
    gts = ["the"] * 2 + ["a"] * 2 + ["x"] * 6  # "the" and "a" normalise to ""
    assert textvqa.soft_accuracy("", gts) == pytest.approx(1.0)
    assert textvqa.soft_accuracy("The", gts) == pytest.approx(1.0)


@pytest.mark.parametrize("prompt, question", [
    (f"What brand?\nReference OCR token: coke, pepsi\n{SHORT}", "what brand?"),
    (f"Reference OCR token: coke\nWhat Brand?\n{SHORT}", "what brand?"),
    (f"What brand?\n{SHORT}", "what brand?"),
    ("OCR tokens: a b Question: What\nis it? Short answer:", "what\nis it?"),
])
def test_question_recovery(prompt, question):
    assert textvqa.question_from_prompt(prompt) == question


@pytest.mark.parametrize("prompt", ["just one line", "a\nb\nc\nd",
                                    f"What?\nsecond line\n{SHORT}"])
def test_question_recovery_errors(prompt):
    with pytest.raises(ScoreError):
        textvqa.question_from_prompt(prompt)


def _annotations(files, records):
    return files.json("TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": records})


def test_score_end_to_end(files, llava_answer):
    ann = _annotations(files, [
        {"image_id": "abc0000000000001", "question": "What Brand?", "answers": ["coke"] * 10},
        {"image_id": "abc0000000000001", "question": "What year?", "answers": ["1990"] * 2 + ["1991"] * 8},
    ])
    p1 = f"What brand?\nReference OCR token: coke\n{SHORT}"
    p2 = f"What year?\nReference OCR token: 1990\n{SHORT}"
    # Same question_id (an image id) for both questions.
    answers = files.jsonl("a.jsonl", [llava_answer("abc0000000000001", "Coke", p1),
                                      llava_answer("abc0000000000001", "1990", p2)])
    questions = files.jsonl("q.jsonl", [
        {"question_id": "abc0000000000001", "image": "abc0000000000001.jpg", "text": p, "category": "x"}
        for p in (p1, p2)])
    block = textvqa.score(answers, ann, questions)
    assert block["accuracy"] == pytest.approx(100 * (1.0 + 0.6) / 2)
    assert block["n"] == 2


def test_unknown_key_and_wrong_answer_count(files, llava_answer):
    prompt = f"What brand?\nReference OCR token: coke\n{SHORT}"
    answers = files.jsonl("a.jsonl", [llava_answer("img2", "coke", prompt)])
    ann = _annotations(files, [{"image_id": "img1", "question": "What brand?", "answers": ["c"] * 10}])
    with pytest.raises(ScoreError, match="no annotation for image_id 'img2'"):
        textvqa.score(answers, ann)
    bad = _annotations(files, [{"image_id": "img2", "question": "What brand?", "answers": ["c"] * 9}])
    with pytest.raises(ScoreError, match="exactly 10"):
        textvqa.score(answers, bad)


def test_answers_must_match_questions(files, llava_answer):
    prompt = f"What brand?\n{SHORT}"
    ann = _annotations(files, [{"image_id": "i", "question": "What brand?", "answers": ["c"] * 10}])
    answers = files.jsonl("a.jsonl", [llava_answer("i", "c", prompt)])
    questions = files.jsonl("q.jsonl", [{"question_id": "i", "image": "i.jpg", "text": prompt},
                                        {"question_id": "i", "image": "i.jpg", "text": "Other?\n" + SHORT}])
    with pytest.raises(ScoreError, match="1 question.*no answer line"):
        textvqa.score(answers, ann, questions)
