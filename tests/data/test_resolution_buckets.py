"""Resolution buckets: a bounded set of static shapes that the HF processors keep."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (Qwen2VLImageProcessorPil,
                                                                        smart_resize)

from duet_jax.data.resolution_buckets import (next_bucket_size, pad_length, qwen_bucket_size,
                                              qwen_buckets, resize)
from duet_jax.models.anyres import select_best_resolution

# Qwen2.5-VL-7B's processor range as its eval scripts use it, and LLaVA-NeXT-7B's pinpoints.
QWEN = dict(patch=14, merge=2, min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28)
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def random_sizes(n, lo=20, hi=3000, seed=0):
    g = np.random.default_rng(seed)
    return [tuple(int(v) for v in g.integers(lo, hi, 2)) for _ in range(n)]


def test_qwen_buckets_are_a_bounded_set_that_smart_resize_keeps():
    allowed = set(qwen_buckets(28, QWEN["min_pixels"], QWEN["max_pixels"]))
    seen = {qwen_bucket_size(h, w, **QWEN) for h, w in random_sizes(3000)}
    assert seen <= allowed and len(allowed) < 300
    for h, w in seen:
        assert h % 28 == 0 and w % 28 == 0
        assert QWEN["min_pixels"] <= h * w <= QWEN["max_pixels"]
        # the processor leaves a bucket-sized image as it is: the grid is the bucket's
        assert smart_resize(h, w, 28, QWEN["min_pixels"], QWEN["max_pixels"]) == (h, w)
        assert qwen_bucket_size(h, w, **QWEN) == (h, w)          # idempotent


def test_qwen_bucket_is_near_the_exact_grid():
    for h, w in random_sizes(500, lo=200, seed=1):
        th, tw = smart_resize(h, w, 28, QWEN["min_pixels"], QWEN["max_pixels"])
        bh, bw = qwen_bucket_size(h, w, **QWEN)
        # sides from a ladder with <= 25 % steps above 16 tokens: within a step of exact
        assert abs(np.log(bh / th)) < np.log(1.35) and abs(np.log(bw / tw)) < np.log(1.35)
        assert abs(np.log((bh / bw) / (th / tw))) < np.log(1.6)


def test_qwen_processor_grid_of_a_bucketed_image():
    proc = Qwen2VLImageProcessorPil(min_pixels=QWEN["min_pixels"], max_pixels=QWEN["max_pixels"],
                                    patch_size=14, merge_size=2, temporal_patch_size=2)
    img = Image.new("RGB", (613, 401))
    size = qwen_bucket_size(401, 613, **QWEN)
    grid = proc(images=[resize(img, size)], return_tensors="np")["image_grid_thw"][0]
    assert tuple(grid) == (1, size[0] // 14, size[1] // 14)


def test_qwen_unsatisfiable_range_is_a_clear_error():
    with pytest.raises(ValueError, match="min_pixels"):
        qwen_bucket_size(100, 100, patch=14, merge=2, min_pixels=10, max_pixels=20)


def test_next_buckets_keep_the_pinpoint_and_are_bounded():
    seen = set()
    for h, w in random_sizes(3000, lo=60, hi=2000, seed=2):
        size = next_bucket_size(h, w, PINPOINTS)
        assert tuple(select_best_resolution(size, PINPOINTS)) == \
            tuple(select_best_resolution((h, w), PINPOINTS))
        assert next_bucket_size(*size, PINPOINTS) == size          # idempotent
        seen.add(size)
    # one short-side fraction in eighths per pinpoint and orientation
    assert len(seen) <= len(PINPOINTS) * 2 * 8


def test_next_processor_tiles_a_canonical_image_like_its_pinpoint():
    proc = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS, size={"shortest_edge": 336},
                                      crop_size={"height": 336, "width": 336})
    img = Image.new("RGB", (900, 500))
    size = next_bucket_size(500, 900, PINPOINTS)
    out = proc(images=[resize(img, size)], return_tensors="np")
    assert tuple(out["image_sizes"][0]) == size
    ph, pw = select_best_resolution((500, 900), PINPOINTS)
    assert out["pixel_values"].shape[1] == 1 + (ph // 336) * (pw // 336)


def test_pad_length():
    assert [pad_length(n, 64) for n in (1, 64, 65)] == [64, 64, 128]
    assert pad_length(37, 1) == 37
    with pytest.raises(ValueError, match="bucket"):
        pad_length(3, 0)
