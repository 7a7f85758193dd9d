"""The tower probes (duet_jax/miniature/probe.py): the regression is checked on data whose
answer is known, the features and labels against the tower and the drawing, the command's
bad input gets one line."""
from __future__ import annotations

import re

import numpy as np
import pytest

import duet_jax
from duet_jax.miniature import probe
from duet_jax.miniature.pipeline import SHIPPED
from duet_jax.miniature.scenes import make_scene
from duet_jax.miniature.tower import patch_labels


def _blobs(seed: int, n: int, classes: int, dim: int = 6, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(classes, dim)
    y = rng.integers(0, classes, n)
    return (centres[y] + spread * rng.standard_normal((n, dim))).astype(np.float32), y


def test_probe_separates_what_the_features_carry_and_not_what_they_do_not():
    xa, ya = _blobs(0, 600, 4)
    xb, yb = _blobs(1, 300, 4)
    w = probe.fit_probe(xa, ya, 4)
    assert w.shape == (7, 4)
    assert probe.probe_accuracy(w, xb, yb) > 0.98
    # The same features with labels drawn independently of them: held-out accuracy stays
    # near chance (0.25 with four balanced classes), far from the separable case.
    rng = np.random.default_rng(2)
    w = probe.fit_probe(xa, rng.integers(0, 4, len(xa)), 4)
    assert probe.probe_accuracy(w, xb, rng.integers(0, 4, len(xb))) < 0.4
    # Deterministic: the same data give the same probe.
    np.testing.assert_array_equal(probe.fit_probe(xa, ya, 4), probe.fit_probe(xa, ya, 4))


def test_chance_is_the_most_frequent_class():
    assert probe.chance(np.array([0, 2, 2, 1, 2])) == pytest.approx(0.6)


@pytest.fixture(scope="module")
def shipped():
    return duet_jax.load_llava(SHIPPED, dtype="float32")


def test_patch_features_are_the_feature_layer_with_the_drawings_labels(shipped):
    x, colour, kind, scene = probe.patch_features(shipped, "train", 3, batch=2)
    n = shipped.config.vision.num_patches
    assert x.shape == (3 * n, shipped.config.vision.hidden_size)
    # Parameter-free layer norm over the features of each patch.
    np.testing.assert_allclose(x.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.var(-1), 1.0, atol=1e-3)
    labels = [patch_labels(make_scene(0, "train", i)[1], 4) for i in range(3)]
    np.testing.assert_array_equal(colour, np.concatenate([c for c, _ in labels]))
    np.testing.assert_array_equal(kind, np.concatenate([k for _, k in labels]))
    np.testing.assert_array_equal(scene, np.repeat(np.arange(3), n))


def test_pool_objects_averages_each_objects_patches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    kind = np.array([0, 5, 5, 7, 0, 5, 7, 7, 6, 0])
    scene = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    pooled, k = probe.pool_objects(x, kind, scene, kind >= 5)
    # (scene 0, kind 5), (0, 7), (1, 5), (1, 6), (1, 7), in that order.
    np.testing.assert_array_equal(k, [5, 7, 5, 6, 7])
    for row, idx in enumerate([[1, 2], [3], [5], [8], [6, 7]]):
        np.testing.assert_allclose(pooled[row], x[idx].mean(0), rtol=1e-6)


def test_shipped_tower_carries_colour_and_shape(shipped):
    # The shipped miniature answers GQA's colour and shape questions from the picture
    # (README), so its features must carry both, far above chance.
    scores = probe.probe_model(shipped, train_scenes=96, test_scenes=48)
    assert set(scores) == set(probe.PROBES)
    for name in ("colour", "shape"):
        assert scores[name]["test"] > 0.9 > scores[name]["chance"] + 0.2, (name, scores[name])
    assert all(s["rows"] > 0 for s in scores.values())
    assert scores["letter object"]["rows"] < scores["letter"]["rows"]
    assert "letter object" in probe.format_probes(scores)


def test_command_bad_input_gets_one_line(tmp_path, capsys):
    assert probe.main([str(tmp_path / "missing")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]
    with pytest.raises(SystemExit) as exit_:
        probe.main([SHIPPED, "--test-scenes", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: --test-scenes must be at least 1")


class CaptionReader:
    """A stand-in LM that answers every question from the caption in its prompt, by rules
    written from the question templates (not from the probe): if the probe shows each
    question its own scene's caption and scores by the official rules, it scores 100."""

    def generate(self, prompts, images, max_new_tokens):
        assert images == [None] * len(prompts) and max_new_tokens >= 2
        return [self.answer(*re.match(r"Scene: (.*)\n(.*?)\n", p).groups()) for p in prompts]

    @staticmethod
    def answer(caption, question):
        objects = [o.removeprefix("a ").removeprefix("the ").removeprefix("small ")
                   for o in caption.rstrip(".").split(", ")]       # left to right
        first = lambda cond, part: next((o.split()[part] for o in objects if cond(o)), "?")  # noqa: E731
        if m := re.fullmatch(r"Is there a (.+) in the image\?", question):
            return "Yes" if any(o.endswith(" " + m.group(1)) for o in objects) else "No"
        if m := re.fullmatch(r"What colour is the (\w+)\?", question):
            return first(lambda o: o.endswith(" " + m.group(1)), 0)
        if m := re.fullmatch(r"Which shape is (\w+)\?", question):
            return first(lambda o: o.startswith(m.group(1) + " ") and "letter" not in o, -1)
        if m := re.fullmatch(r"How many (\w+)s are there\?", question):
            return str(sum(o.endswith(" " + m.group(1)) for o in objects))
        if m := re.fullmatch(r"What letter is written in (\w+)\?", question):
            return first(lambda o: o.startswith(m.group(1) + " letter"), -1)
        m = re.fullmatch(r"Is the (.+) to the left or right of the (.+)\?", question)
        a, b = (objects.index(x) if x in objects else 0 for x in m.groups())
        return "left" if a < b else "right"


def test_caption_probe_shows_each_question_its_own_scene(tmp_path, monkeypatch):
    from duet_jax.miniature.dataset import DataConfig, generate
    data = generate(str(tmp_path / "data"), DataConfig(
        seed=2, train_images=2, val_pope_per_split=1, val_textvqa=1, val_gqa=1,
        test_pope_per_split=8, test_textvqa=6, test_gqa=12))
    scores = probe.caption_scores(CaptionReader(), data, "test", str(tmp_path / "answers"))
    assert sum(s["n"] for s in scores.values()) == 3 * 8 + 6 + 12
    assert {k: s["score"] for k, s in scores.items()} == {k: 100.0 for k in scores}
    assert "GQA left/right" in probe.format_caption_scores(scores)
    # The same reader shown one scene's caption for every question is often wrong.
    one = make_scene(2, "test-gqa", 0)[1]
    monkeypatch.setattr(probe.dataset, "scene_of", lambda image, seed: one)
    scores = probe.caption_scores(CaptionReader(), data, "test", str(tmp_path / "answers"))
    assert sum(s["score"] for s in scores.values()) < 100.0 * len(scores) - 100
