"""Dynamic resolution snapped to a bounded set of static shapes.

Qwen2.5-VL and LLaVA-NeXT size their image blocks by the image: every distinct
grid (Qwen) or image size (NeXT's unpadding) is another compiled program.
Snapping the image to a bucket before the model's own processor bounds the
number of programs by the number of buckets; the processor then sees an image
it keeps as it is (Qwen) or tiles exactly like any other image of that size
(NeXT), so the model still runs HF's pre-processing on the resized picture.

* Qwen2.5-VL: the grid side, in merged tokens (28 px), is snapped to a ladder
  that is dense for small sides and geometric for large ones; among the ladder
  pairs whose area lies in [min_pixels, max_pixels] the one nearest in log
  space to HF's `smart_resize` target wins (ties: the smaller area).
* LLaVA-NeXT: the size is snapped to a canonical size of the same AnyRes
  pinpoint: the pinpoint itself with its content fraction (the unpadded share
  of the short side) rounded to eighths.
Pure Python + NumPy (no JAX): the host computes buckets before batching.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Tuple

# Grid sides in merged tokens (x patch x merge pixels each). Multiples of 4 from
# 8 on keep Qwen2.5-VL's 112-px attention windows whole.
QWEN_SIDES = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128)
NEXT_FRACTIONS = 8      # NeXT content fraction steps: 1/8 .. 8/8


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def qwen_buckets(unit: int, min_pixels: int, max_pixels: int,
                 sides: Sequence[int] = QWEN_SIDES) -> list:
    """Every (height, width) in pixels a Qwen image may be snapped to."""
    lo, hi = min_pixels / unit ** 2, max_pixels / unit ** 2
    return [(a * unit, b * unit) for a in sides for b in sides if lo <= a * b <= hi]


def qwen_bucket_size(height: int, width: int, *, patch: int, merge: int, min_pixels: int,
                     max_pixels: int, sides: Sequence[int] = QWEN_SIDES) -> Tuple[int, int]:
    """(height, width) in pixels of the bucket for an image of `height x width`."""
    unit = patch * merge
    th, tw = _smart_resize(height, width, unit, min_pixels, max_pixels)
    options = qwen_buckets(unit, min_pixels, max_pixels, sides)
    if not options:
        raise ValueError(f"no grid of sides {tuple(sides)} x {unit} px fits min_pixels="
                         f"{min_pixels}, max_pixels={max_pixels}; widen the pixel range or the sides")
    dist = lambda hw: (math.log(hw[0] / th) ** 2 + math.log(hw[1] / tw) ** 2,  # noqa: E731
                       hw[0] * hw[1], hw)
    return min(options, key=dist)


def next_bucket_size(height: int, width: int, pinpoints: Iterable,
                     steps: int = NEXT_FRACTIONS) -> Tuple[int, int]:
    """Canonical (height, width) for a LLaVA-NeXT image: the image's best pinpoint
    (HF's choice), with the content's share of the short side rounded to 1/steps."""
    from duet_jax.ops import select_best_resolution
    ph, pw = select_best_resolution((height, width), pinpoints)
    scale = min(ph / height, pw / width)          # the processor fits the image inside
    fh, fw = height * scale / ph, width * scale / pw
    snap = lambda f: max(1, round(f * steps)) / steps   # noqa: E731
    size = (round(ph * snap(fh)), round(pw * snap(fw)))
    # A canonical size must pick the same pinpoint again (it has the same aspect
    # as a pinpoint-filling image, so HF's rule keeps it; checked, not assumed).
    if tuple(select_best_resolution(size, pinpoints)) != (ph, pw):
        return ph, pw
    return size


def resize(image, size_hw: Tuple[int, int], resample: Optional[int] = None):
    """PIL image resized to (height, width) (bicubic, as the processors use)."""
    from PIL import Image
    if (image.height, image.width) == tuple(size_hw):
        return image
    return image.resize((size_hw[1], size_hw[0]), Image.BICUBIC if resample is None else resample)


def pad_length(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple` (the prompt-length bucket)."""
    if multiple < 1:
        raise ValueError(f"length bucket {multiple} must be >= 1")
    return -(-length // multiple) * multiple
