"""Shared fixtures: a tokenizer built once per session, small configs over configs/tiny.yaml."""
from __future__ import annotations

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_YAML = os.path.join(ROOT, "configs", "tiny.yaml")
TINY_JSON = os.path.join(ROOT, "duet_jax", "data", "assets", "tiny_llava.json")
IMAGE_FOLDER = os.path.join(ROOT, "duet_jax", "data", "assets")

# Smaller than tiny.yaml (faster to compile), DUET still on in both stages.
SMALL = ["model.random.vision_layers=2", "model.random.text_layers=3",
         "reduction.stage2.layers=[1, 2]", "data.max_length=100", "data.length_buckets=[100]",
         "segment_bucket=32",
         f"data.train_json={TINY_JSON}", f"data.image_folder={IMAGE_FOLDER}",
         "checkpoint.export_hf=false", "data.num_threads=0"]


@pytest.fixture(scope="session")
def assets_dir(tmp_path_factory):
    """Tokenizer + image processor of the tiny random model (what train.py builds itself)."""
    from duet_jax.training.random_model import build_tokenizer, corpus_from_records

    with open(TINY_JSON) as f:
        records = json.load(f)
    return build_tokenizer(str(tmp_path_factory.mktemp("assets")), corpus_from_records(records),
                           600, 56)


@pytest.fixture
def small_config(assets_dir, tmp_path):
    """load_config(tiny.yaml + SMALL + extra overrides) writing into tmp_path."""
    from duet_jax.training.config import load_config

    def make(*extra):
        return load_config(TINY_YAML, [*SMALL, f"model.tokenizer={assets_dir}",
                                       f"output_dir={tmp_path / 'run'}", *extra])
    return make
