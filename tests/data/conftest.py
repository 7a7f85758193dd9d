"""Session fixtures for the data tests: a real Llama-style tokenizer and a tiny CLIP processor."""
from __future__ import annotations

import pytest

from tests.helpers.tokenizer import build_tiny_tokenizer

CROP = 28    # tiny CLIP processor: shortest edge 28, centre crop 28x28


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok_legacy")), legacy=True)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


@pytest.fixture(scope="session")
def tokenizer_nonlegacy(tokenizer_dir):
    """Same vocabulary, transformers 5's default non-legacy prefix handling."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, legacy=False)
    assert tok.legacy is False
    return tok


@pytest.fixture(scope="session")
def processor_dir(tmp_path_factory):
    from transformers import CLIPImageProcessorPil

    path = str(tmp_path_factory.mktemp("clip_processor"))
    CLIPImageProcessorPil(size={"shortest_edge": CROP},
                          crop_size={"height": CROP, "width": CROP}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def processor(processor_dir):
    from duet_jax.data.images import load_image_processor

    return load_image_processor(processor_dir)
