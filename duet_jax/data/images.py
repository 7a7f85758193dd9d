"""Image loading and LLaVA-1.5 preprocessing (docs/EVAL.md §0, `image_aspect_ratio="pad"`).

load -> RGB -> pad to a square with the processor's mean colour (`int(255*m)`
per channel, original centred as LLaVA's `expand2square`) -> the checkpoint's
own CLIP image processor (PIL backend, numpy output) -> float32 [3, H, W].
No torch, no torchvision.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

PREPROCESSOR_FILE = "preprocessor_config.json"


def load_image(path: str) -> Image.Image:
    """Open an image file as RGB; a missing file raises FileNotFoundError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path} (check the image folder / path)")
    with Image.open(path) as img:
        return img.convert("RGB")


def background_color(image_mean: Sequence[float]) -> Tuple[int, ...]:
    """LLaVA's pad colour: `tuple(int(x * 255) for x in image_mean)` (truncation, not rounding)."""
    return tuple(int(x * 255) for x in image_mean)


def expand_to_square(img: Image.Image, color: Tuple[int, ...]) -> Image.Image:
    """LLaVA's `expand2square`: paste into a max(w, h) square filled with `color`.

    The offset along the short side is `(long - short) // 2` (floor), so an odd
    difference leaves the extra pixel at the bottom / right.
    """
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, ((side - width) // 2, (side - height) // 2))
    return out


def load_image_processor(checkpoint_dir: str, *, image_size: Optional[int] = None):
    """The checkpoint's CLIP image processor, PIL backend, offline.

    Reads `checkpoint_dir/preprocessor_config.json` (llava-hf layout). Original
    LLaVA checkpoints have none (the processor belongs to the vision tower); pass
    `image_size` (the vision config's) to build the standard CLIP processor for
    that size: resize short side, centre crop, OpenAI CLIP mean/std, bicubic.
    """
    from transformers import AutoImageProcessor, CLIPImageProcessorPil

    if os.path.isfile(os.path.join(checkpoint_dir, PREPROCESSOR_FILE)):
        return AutoImageProcessor.from_pretrained(checkpoint_dir, backend="pil",
                                                  local_files_only=True)
    if image_size is None:
        raise FileNotFoundError(
            f"{os.path.join(checkpoint_dir, PREPROCESSOR_FILE)} not found; pass image_size= "
            f"(the vision tower's) to use the standard CLIP processor")
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def _field(sizes, key: str):
    # transformers 5 stores sizes as SizeDict (attributes); older ones as plain dicts.
    return sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)


def processor_output_shape(processor) -> Tuple[int, int, int]:
    """(3, H, W) that `preprocess_image` returns for this processor."""
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop and _field(crop, "height"):
        return (3, int(_field(crop, "height")), int(_field(crop, "width")))
    size = processor.size
    if _field(size, "height"):
        return (3, int(_field(size, "height")), int(_field(size, "width")))
    raise ValueError(f"cannot infer the output size of {type(processor).__name__} "
                     f"(size={size}); use a processor with a centre crop or a fixed size")


def preprocess_image(image: Union[str, Image.Image], processor, *, pad: bool = True) -> np.ndarray:
    """Image or path -> pixel values float32 [3, H, W] (the processor's layout).

    `pad=True` is LLaVA-1.5's `image_aspect_ratio="pad"`; `pad=False` feeds the
    image straight to the processor (llava-hf's LlavaProcessor behaviour).
    """
    img = load_image(image) if isinstance(image, str) else image.convert("RGB")
    if pad:
        img = expand_to_square(img, background_color(processor.image_mean))
    pixels = processor(images=img, return_tensors="np")["pixel_values"]
    return np.asarray(pixels[0], dtype=np.float32)
