"""The synthetic task: scenes match their facts, questions match the scenes, and the
written files score 100 with the official-rule scorers when answered with the truth."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from duet_jax.miniature import tasks
from duet_jax.miniature.dataset import DataConfig, eval_paths, generate
from duet_jax.miniature.scenes import COLORS, SHAPES, label_map, make_scene, rng_for
from duet_jax.miniature.tower import patch_labels

TOY = DataConfig(seed=3, train_images=6, val_pope_per_split=2, val_textvqa=2, val_gqa=4,
                 test_pope_per_split=4, test_textvqa=3, test_gqa=8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(str(tmp_path_factory.mktemp("mini_data")), TOY)


def test_scenes_are_deterministic_and_drawn_as_described():
    for index in range(12):
        img_a, scene_a = make_scene(0, "train", index)
        img_b, scene_b = make_scene(0, "train", index)
        assert scene_a == scene_b and np.array_equal(np.asarray(img_a), np.asarray(img_b))
        pixels, labels = np.asarray(img_a).astype(int), label_map(scene_a)
        for k, thing in enumerate(scene_a.objects, start=1):
            mask = labels == k
            assert mask.sum() >= 20, thing
            rgb = np.array(COLORS[thing.color])
            if thing.kind == "letter":
                # Antialiased edges blend with the background; the body is the colour.
                diff = np.abs(pixels[mask] - rgb).max(axis=1)
                assert np.median(diff) <= 10 and (diff <= 60).mean() > 0.75, thing
                continue
            # Shapes: the colour where the kind's 2-px pattern is light, 0.55 x it where dark.
            yy, xx = np.nonzero(mask)
            dark = {"circle": np.zeros_like(xx, bool), "square": xx % 2 == 1,
                    "triangle": yy % 2 == 1, "diamond": (xx + yy) % 2 == 1}[thing.kind]
            expected = np.where(dark[:, None], np.round(0.55 * rgb), rgb)
            assert np.abs(pixels[mask] - expected).max() <= 1, thing
    assert not np.array_equal(np.asarray(make_scene(0, "train", 0)[0]),
                              np.asarray(make_scene(0, "test", 0)[0]))


def test_patch_labels_follow_the_label_map():
    _, scene = make_scene(0, "train", 1)
    colour, kind = patch_labels(scene, 4)
    labels = label_map(scene)
    assert colour.shape == kind.shape == (576,)
    for p in np.flatnonzero(kind):
        r, c = divmod(int(p), 24)
        block = labels[4 * r:4 * r + 4, 4 * c:4 * c + 4]
        owner = scene.objects[np.bincount(block[block > 0]).argmax() - 1]
        assert list(COLORS)[colour[p] - 1] == owner.color
    assert (kind == 0).mean() > 0.5        # most patches are background


def test_questions_agree_with_the_scene():
    for index in range(60):
        _, scene = make_scene(1, "val", index)
        rng = rng_for(1, "q", index)
        present = tasks.present_objects(scene)
        for split in tasks.POPE_SPLITS:
            qa = tasks.pope_question(scene, rng, False, split)
            thing = qa.question[len("Is there a "):-len(" in the image?")]
            assert qa.answer == "No" and thing in tasks.OBJECTS and thing not in present
            alike = {a for o in present for a in tasks.LOOKALIKE[o]} - set(present)
            if split == "adversarial" and alike:
                assert thing in alike
            if split == "popular" and any(s not in present for s in SHAPES):
                assert not thing.startswith("letter")
        qa = tasks.pope_question(scene, rng, True, "random")
        thing = qa.question[len("Is there a "):-len(" in the image?")]
        assert qa.answer == "Yes" and thing in present
        assert any(t.kind == thing or f"letter {t.letter}" == thing for t in scene.objects)
        qa = tasks.count_question(scene, rng)
        assert int(qa.answer) == scene.count(qa.question.split()[2][:-1])
        qa = tasks.read_question(scene, rng)
        if qa is not None:
            colour = qa.question.split()[-1].rstrip("?")
            assert [t.letter for t in scene.letters if t.color == colour] == [qa.answer]
            assert len(qa.text.split("\n")) == 3      # TextVQA's question / OCR / suffix lines


def test_training_records_are_llava_conversations(data_dir):
    with open(os.path.join(data_dir, "train.json")) as f:
        records = json.load(f)
    assert len(records) == TOY.train_images
    for rec in records:
        turns = rec["conversations"]
        first = turns[0]["value"]
        assert first.startswith("<image>\n")
        assert first.endswith(tasks.SHORT) or first == "<image>\nDescribe the image briefly."
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert os.path.isfile(os.path.join(data_dir, rec["image"]))


def test_text_records_are_the_image_records_with_the_caption_for_the_picture(data_dir):
    with open(os.path.join(data_dir, "train.json")) as f:
        records = json.load(f)
    with open(os.path.join(data_dir, "text.json")) as f:
        text = json.load(f)
    assert len(text) == len(records)
    for rec, txt in zip(records, text):
        assert "image" not in txt and not any("<image>" in t["value"]
                                              for t in txt["conversations"])
        pairs = list(zip(rec["conversations"][::2], rec["conversations"][1::2]))
        caption = next(a["value"] for q, a in pairs if q["value"].endswith("briefly."))
        kept = [(q["value"].removeprefix("<image>\n"), a["value"]) for q, a in pairs
                if not q["value"].endswith("briefly.")]
        got = [(q["value"], a["value"]) for q, a in zip(txt["conversations"][::2],
                                                        txt["conversations"][1::2])]
        assert got[0][0] == f"Scene: {caption}\n{kept[0][0]}"
        assert got[1:] == kept[1:] and got[0][1] == kept[0][1]


@pytest.mark.parametrize("benchmark,expected", [("pope", "f1_mean"), ("textvqa", "accuracy"),
                                                ("gqa", "accuracy")])
def test_truthful_answers_score_100(data_dir, tmp_path, benchmark, expected):
    from duet_jax.evaluation.questions import answer_record, load_questions
    from duet_jax.evaluation.scoring import score_benchmark
    paths = eval_paths(data_dir, "test", benchmark)
    questions = load_questions(benchmark, paths["questions"])
    truth = _truth(benchmark, paths)
    answers = tmp_path / "answers.jsonl"
    with open(answers, "w") as f:
        for q in questions:
            f.write(json.dumps(answer_record(q, truth[q.question_id], "toy")) + "\n")
    block = score_benchmark(benchmark, str(answers), paths["annotations"], paths["questions"])
    assert block[expected] == pytest.approx(100.0)
    # A constant answer cannot score 100 on these balanced files.
    with open(answers, "w") as f:
        for q in questions:
            f.write(json.dumps(answer_record(q, "No", "toy")) + "\n")
    assert score_benchmark(benchmark, str(answers), paths["annotations"],
                           paths["questions"])[expected] < 100.0


def _truth(benchmark, paths):
    if benchmark == "pope":
        with open(paths["questions"]) as f:
            qs = [json.loads(line) for line in f]
        out = {}
        for split in tasks.POPE_SPLITS:
            with open(os.path.join(paths["annotations"], f"coco_pope_{split}.json")) as f:
                labels = [json.loads(line)["label"] for line in f]
            for q, label in zip([q for q in qs if q["category"] == split], labels):
                out[q["question_id"]] = label.capitalize()
        return out
    if benchmark == "textvqa":
        with open(paths["annotations"]) as f:
            return {r["image_id"]: r["answers"][0] for r in json.load(f)["data"]}
    with open(paths["annotations"]) as f:
        return {qid: r["answer"] for qid, r in json.load(f).items()}


def test_generate_is_cached_by_config(data_dir):
    before = os.path.getmtime(os.path.join(data_dir, "train.json"))
    generate(data_dir, TOY)
    assert os.path.getmtime(os.path.join(data_dir, "train.json")) == before


def test_rng_streams_differ():
    assert rng_for(0, "a", 1).random() != rng_for(0, "b", 1).random()
    assert rng_for(0, "a", 1).random() == rng_for(0, "a", 1).random()


def test_training_turns_leak_no_answer_and_open_with_every_family():
    firsts = set()
    rank = {"pope": 0, "read": 1, "colour": 2, "shape": 2, "count": 2, "position": 2, "caption": 3}
    for index in range(200):
        _, scene = make_scene(0, "train", index)
        qas = tasks.training_questions(scene, rng_for(0, "train-q", index))
        firsts.add(qas[0].kind)
        ranks = [rank[qa.kind] for qa in qas[1:]]
        assert ranks == sorted(ranks) and qas[-1].kind == "caption"
    assert firsts == set(rank) - {"caption"}      # the eval asks every family as a first turn


def test_training_existence_questions_carry_no_answer_prior():
    """Yes and No equally often for shape and for letter questions (and the answers true)."""
    counts = {(letter, answer): 0 for letter in (False, True) for answer in ("Yes", "No")}
    for index in range(600):
        _, scene = make_scene(0, "train", index)
        present = tasks.present_objects(scene)
        for qa in tasks.training_questions(scene, rng_for(0, "train-q", index)):
            if qa.kind == "pope":
                thing = qa.question[len("Is there a "):-len(" in the image?")]
                assert (thing in present) == (qa.answer == "Yes")
                counts[(tasks.is_letter(thing), qa.answer)] += 1
    for letter in (False, True):
        yes, no = counts[(letter, "Yes")], counts[(letter, "No")]
        assert yes + no > 500 and abs(yes / (yes + no) - 0.5) < 0.04, counts


def test_category_scores_split_each_benchmark_by_kind_of_question(data_dir, tmp_path):
    from duet_jax.evaluation.questions import answer_record, load_questions
    from duet_jax.miniature.evaluate import CATEGORIES, category_scores

    def write(wrong_kind=None):
        for benchmark in ("pope", "textvqa", "gqa"):
            paths = eval_paths(data_dir, "test", benchmark)
            truth = _truth(benchmark, paths)
            with open(paths["questions"]) as f:
                kinds = {json.loads(x)["question_id"]: json.loads(x)["category"] for x in f}
            with open(tmp_path / f"{benchmark}.jsonl", "w") as f:
                for q in load_questions(benchmark, paths["questions"]):
                    answer = truth[q.question_id]
                    if kinds[q.question_id] == wrong_kind:      # GQA rows carry their kind
                        answer = "seven"
                    f.write(json.dumps(answer_record(q, answer, "toy")) + "\n")
        return category_scores(data_dir, "test", str(tmp_path))

    scores = write()
    assert set(scores) <= set(CATEGORIES) and scores
    assert all(s["score"] == pytest.approx(100.0) for s in scores.values())
    with open(eval_paths(data_dir, "test", "pope")["questions"]) as f:
        pope_texts = [json.loads(x)["text"] for x in f]
    letters = sum(" letter " in t for t in pope_texts)
    assert scores.get("POPE letters", {"n": 0})["n"] == letters
    assert scores["POPE shapes"]["n"] == len(pope_texts) - letters
    assert scores["TextVQA"]["n"] == TOY.test_textvqa
    assert sum(s["n"] for k, s in scores.items() if k.startswith("GQA")) == TOY.test_gqa
    # Wrong answers to the count questions only: that kind falls to 0, no other moves.
    scores = write(wrong_kind="count")
    assert scores["GQA count"]["score"] == 0.0
    assert all(s["score"] == pytest.approx(100.0) for k, s in scores.items() if k != "GQA count")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_question_records_give_back_the_official_headlines(data_dir, tmp_path, seed):
    """Each benchmark's headline recomputed from the per-question records (what the
    bootstrap resamples) equals the official-rule scorer's, for answers mixing right,
    wrong and unparseable ones (POPE: F1 per split, then averaged)."""
    import random
    from duet_jax.evaluation.questions import answer_record, load_questions
    from duet_jax.evaluation.scoring import score_benchmark
    from duet_jax.miniature.evaluate import HEADLINE, question_records, resampled_headline
    rng = random.Random(seed)
    blocks = {}
    for benchmark in ("pope", "textvqa", "gqa"):
        paths = eval_paths(data_dir, "test", benchmark)
        truth = _truth(benchmark, paths)
        with open(tmp_path / f"{benchmark}.jsonl", "w") as f:
            for q in load_questions(benchmark, paths["questions"]):
                answer = rng.choice([truth[q.question_id], "Yes", "No", "7", "blue, no."])
                f.write(json.dumps(answer_record(q, answer, "toy")) + "\n")
        blocks[benchmark] = score_benchmark(benchmark, str(tmp_path / f"{benchmark}.jsonl"),
                                            paths["annotations"], paths["questions"])
    records = question_records(data_dir, "test", str(tmp_path))
    for benchmark, rec in records.items():
        every = np.arange(len(rec["value"]))[None]
        assert resampled_headline(benchmark, rec, every)[0] == pytest.approx(
            blocks[benchmark][HEADLINE[benchmark]], abs=1e-9), benchmark
    assert sorted(set(records["pope"]["stratum"])) == [0, 1, 2]
