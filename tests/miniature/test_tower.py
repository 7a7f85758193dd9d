"""Stage 0 (duet_jax/miniature/tower.py): a killed run resumes to the weights of an
uninterrupted one; the letter knobs weigh and draw what they say."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import duet_jax
from duet_jax.miniature import tower
from duet_jax.miniature.dataset import DataConfig, generate
from duet_jax.miniature.scenes import SHAPES, make_scene
from duet_jax.resources import bundled_config
from duet_jax.training.config import ConfigError

TOY = DataConfig(seed=4, train_images=6, val_pope_per_split=1, val_textvqa=1, val_gqa=1,
                 test_pope_per_split=1, test_textvqa=1, test_gqa=1)
SMALL = ["model.random.vision_hidden_size=32", "model.random.vision_intermediate_size=64",
         "model.random.vision_layers=2", "model.random.text_hidden_size=32",
         "model.random.text_intermediate_size=64", "model.random.tokenizer_vocab_size=400"]
TOY_TOWER = tower.TowerConfig(steps=4, batch_size=2, warmup_steps=1, images=TOY.train_images,
                              data_seed=TOY.seed, letter_weight=12.0, letter_share=1.0)


@pytest.fixture(scope="module")
def overrides(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("data"))
    generate(data, TOY)
    return [f"data.train_json={os.path.join(data, 'train.json')}",
            f"data.image_folder={data}", *SMALL]


def _train(overrides, out_dir, log=lambda *_: None):
    return tower.pretrain_tower(bundled_config("miniature.yaml"), overrides, out_dir,
                                TOY_TOWER, log=log, save_every=2)


def test_a_killed_tower_run_resumes_to_the_uninterrupted_weights(overrides, tmp_path,
                                                                    monkeypatch):
    whole = _train(overrides, str(tmp_path / "whole"))
    real, calls = tower.make_batch, []

    def killed_at_step_4(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tower, "make_batch", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        _train(overrides, str(tmp_path / "cut"))
    assert not os.path.isdir(tmp_path / "cut" / "final")     # nothing that looks complete
    monkeypatch.setattr(tower, "make_batch", real)
    lines = []
    cut = _train(overrides, str(tmp_path / "cut"), log=lines.append)
    assert "  tower: resuming from step 2" in lines      # step 3 was lost with the kill
    a, b = (duet_jax.load_llava(p, dtype="float32").params["vision"] for p in (whole, cut))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    rows = [[json.loads(x) for x in open(os.path.join(os.path.dirname(p), "tower_metrics.jsonl"))]
            for p in (whole, cut)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    # Resuming with other settings would train on a schedule the checkpoint never saw.
    with pytest.raises(ConfigError, match="other settings"):
        tower.pretrain_tower(bundled_config("miniature.yaml"), overrides, str(tmp_path / "cut"),
                             dataclasses.replace(TOY_TOWER, lr=1e-3), log=lambda *_: None)


def test_letter_share_draws_letters_into_every_tower_scene():
    scenes = [make_scene(0, "train", i, glyph_share=1.0)[1] for i in range(20)]
    assert sum(len(s.letters) == 2 for s in scenes) >= 18     # placement may fail rarely
    assert make_scene(0, "train", 3)[1] == make_scene(0, "train", 3)[1]     # default unchanged


def test_letter_weight_weighs_letter_patches_only():
    """The patch loss is the weighted mean of the patches' cross-entropies: background 1,
    shapes OBJECT_WEIGHT, letters letter_weight (checked against NumPy by hand)."""
    class Tower:            # a stand-in tower whose output is its parameters
        def apply(self, params, pixels, output_hidden_states):
            return params
    kind = np.array([[0, 1, 1 + len(SHAPES), 0]])
    feats = np.array([[[0, 0], [1, -1], [1, -1], [1, -1], [-1, 1]]], np.float32)  # CLS first
    kind_head = np.zeros((2, tower.KIND_CLASSES), np.float32)
    kind_head[0, 0] = 1.0                 # background favoured where the feature is [1, -1]
    out = type("Out", (), {"hidden_states": [None, jnp.asarray(feats)],
                           "pooled": jnp.zeros((1, 2))})()
    params = {"vision": out, "heads": {"colour": jnp.zeros((2, tower.COLOUR_CLASSES)),
                                       "kind": jnp.asarray(kind_head),
                                       "present": jnp.zeros((2, tower.IMAGE_LABELS))}}
    batch = {"pixels": None, "kind": jnp.asarray(kind), "colour": jnp.zeros((1, 4), jnp.int32),
             "present": jnp.zeros((1, tower.IMAGE_LABELS))}

    def expected(letter_weight):
        logits = feats[0, 1:] @ kind_head                  # layer norm keeps +-1 rows
        ce = np.log(np.exp(logits).sum(-1)) - logits[np.arange(4), kind[0]]
        w = np.array([1.0, tower.OBJECT_WEIGHT, letter_weight, 1.0])
        return np.log(tower.COLOUR_CLASSES) + (w * ce).sum() / w.sum()

    for letter_weight in (0.0, tower.OBJECT_WEIGHT, 40.0):
        dense = tower.losses(Tower(), 0, params, batch, letter_weight)[1]["dense"]
        assert float(dense) == pytest.approx(expected(letter_weight), rel=1e-5)
    default = tower.losses(Tower(), 0, params, batch)[1]["dense"]
    assert float(default) == pytest.approx(expected(tower.OBJECT_WEIGHT), rel=1e-5)
    assert expected(0.0) != pytest.approx(expected(40.0))     # the weight matters here


def test_command_bad_input_gets_one_line(tmp_path, capsys):
    assert tower.main(["--out", str(tmp_path / "run"), "--config", str(tmp_path / "no.yaml")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no.yaml" in err[0]
