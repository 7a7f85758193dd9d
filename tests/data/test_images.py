"""Image loading, pad-to-square and the CLIP processor (PIL backend, numpy output)."""
from __future__ import annotations

import ast
import os

import numpy as np
import pytest
from PIL import Image

from duet_jax.data.images import (background_color, expand_to_square, load_image,
                                  load_image_processor, preprocess_image)
from tests.data.conftest import CROP

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _random_image(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return pixels, Image.fromarray(pixels)


def _pad_manually(pixels, color):
    """Numpy oracle of LLaVA's expand2square."""
    h, w, _ = pixels.shape
    side = max(h, w)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = color
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = pixels
    return canvas


def test_background_is_truncated_clip_mean():
    assert background_color(CLIP_MEAN) == (122, 116, 104)


@pytest.mark.parametrize("size", [(37, 20), (20, 37), (24, 24), (30, 29)])
def test_expand_to_square_matches_numpy(size):
    pixels, img = _random_image(*size)
    out = expand_to_square(img, (1, 2, 3))
    np.testing.assert_array_equal(np.asarray(out), _pad_manually(pixels, (1, 2, 3)))


def test_preprocess_matches_processor_on_manually_padded_image(processor, tmp_path):
    pixels, img = _random_image(45, 26, seed=1)
    path = str(tmp_path / "x.png")
    img.save(path)
    ours = preprocess_image(path, processor)
    padded = Image.fromarray(_pad_manually(pixels, background_color(processor.image_mean)))
    reference = processor(images=padded, return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, CROP, CROP) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference)
    # Unpadded input differs (the processor would crop the sides instead).
    assert not np.allclose(preprocess_image(img, processor, pad=False), ours)


def test_processor_normalization_numpy_oracle(processor):
    # An image already at crop size is neither resized nor cropped: only rescale + normalize.
    pixels, img = _random_image(CROP, CROP, seed=2)
    ours = preprocess_image(img, processor)
    oracle = ((pixels / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(ours, oracle, atol=1e-5)


def test_grayscale_and_rgba_become_rgb(processor):
    gray = Image.fromarray(np.full((10, 16), 200, np.uint8), mode="L")
    rgba = Image.fromarray(np.full((10, 16, 4), 200, np.uint8), mode="RGBA")
    for img in (gray, rgba):
        assert preprocess_image(img, processor).shape == (3, CROP, CROP)


def test_missing_image_names_the_file(tmp_path):
    missing = str(tmp_path / "nope" / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(missing)


def test_processor_loading(processor_dir, tmp_path):
    proc = load_image_processor(processor_dir)
    assert type(proc).__name__ == "CLIPImageProcessorPil"
    fallback = load_image_processor(str(tmp_path), image_size=CROP)
    img = _random_image(33, 21)[1]
    np.testing.assert_array_equal(preprocess_image(img, fallback), preprocess_image(img, proc))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_image_processor(str(tmp_path))


def test_data_package_never_imports_torch():
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "duet_jax", "data")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"torch", "torchvision", "jax"} & set(roots), f"{name} imports {roots}"
