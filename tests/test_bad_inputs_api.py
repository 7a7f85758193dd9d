"""Bad arguments to the Python API of every family (LLaVA-1.5, LLaVA-NeXT, Video-LLaVA,
Qwen2.5-VL, LLaVA-OneVision) fail before any work with a ValueError / TypeError that names the argument and
the fix: the checks live once in the Handle base (`check_batch`, `check_generation`,
`check_pixels_used`), so each family is tried on the same cases."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import duet_jax

FAMILIES = ("llava", "next", "video", "qwen", "onevision")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One tiny handle per family, loaded on first use."""
    cache: dict = {}

    def get(family):
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            if family == "llava":
                from tests.helpers.tiny_checkpoint import cached_tiny_checkpoint
                path = cached_tiny_checkpoint()
            elif family == "next":
                from tests.helpers.tiny_next import build_tiny_next_checkpoint
                path = build_tiny_next_checkpoint(str(root / "tiny"))
            elif family == "onevision":
                from tests.helpers.tiny_onevision import build_tiny_onevision_checkpoint
                path = build_tiny_onevision_checkpoint(str(root / "tiny"))
            elif family == "video":
                from tests.helpers.tiny_video import build_tiny_video_checkpoint
                path = build_tiny_video_checkpoint(str(root / "tiny"))
            else:
                from tests.helpers.tiny_qwen import save_tiny_processor, tiny_qwen
                path = str(root / "tiny")
                tiny_qwen(text_layers=2).save_pretrained(path)
                save_tiny_processor(path)
            cache[family] = duet_jax.load_llava(path)
        return cache[family]
    return get


def _image():
    return Image.fromarray((np.random.default_rng(0).random((56, 56, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_max_new_tokens_below_one_is_a_clear_value_error(models, family, bad):
    model = models(family)
    with pytest.raises(ValueError, match=f"max_new_tokens must be a positive integer, got {bad!r}"):
        model.generate(["What?"], [_image()], max_new_tokens=bad)
    batch = model.encode(["What?"], [_image()])
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        model.generate_batch(batch, max_new_tokens=bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_arguments_out_of_range(models, family):
    model = models(family)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.generate(["What?"], [_image()], max_new_tokens=1, temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        model.generate(["What?"], [_image()], max_new_tokens=1, top_p=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_single_string_or_image_is_refused_not_split(models, family):
    """`generate("What?", img)` used to read 5 characters as 5 prompts; it names the fix."""
    model = models(family)
    image = _image()
    with pytest.raises(TypeError, match=r"prompts must be a list of strings .* got str"):
        model.generate("What?", image, max_new_tokens=1)
    with pytest.raises(TypeError, match=r"images must be a list with one entry per prompt .* "
                                        r"got a single"):
        model.generate(["What?"], image, max_new_tokens=1)
    with pytest.raises(TypeError, match="images must be a list"):
        model.encode(["What?"], "picture.png")
    with pytest.raises(TypeError, match="a list holding non-strings"):
        model.encode([3], [image])
    with pytest.raises(ValueError, match="prompts is empty"):
        model.encode([], [])


def test_pixels_without_image_tokens_are_refused(models):
    """LLaVA-1.5 and Video-LLaVA: a sample with a real image but no <image> tokens in its
    ids would silently run text-only; the text-only rows of an encoded batch (zero pixels)
    still pass. (LLaVA-NeXT's token count check and Qwen's below cover the others.)"""
    for family in ("llava", "video"):
        model = models(family)
        batch = model.encode(["What?", "Hi"], [_image(), None])
        ids, pixels = batch["input_ids"], batch["pixel_values"]
        model.logits(ids, pixels, batch["attention_mask"])            # text-only row: zeros
        text_only = model.encode(["What?", "Hi"], [None, None])
        with pytest.raises(ValueError, match=r"sample\(s\) \[0, 1\] carry image pixels but no "
                                             r"image tokens"):
            model.logits(text_only["input_ids"], pixels[[0, 0]], text_only["attention_mask"])


def test_next_and_qwen_pixels_without_image_tokens(models):
    nxt = models("next")
    batch = nxt.encode(["What?"], [_image()])
    ids = np.where(batch["input_ids"] == nxt.config.image_token_index, 5, batch["input_ids"])
    with pytest.raises(ValueError, match="has 0 image tokens"):
        nxt.logits(ids, batch["pixel_values"], batch["attention_mask"])
    qwen = models("qwen")
    batch = qwen.encode(["What?"], [_image()])
    ids = np.where(batch["input_ids"] == qwen.config.image_token_id, 5, batch["input_ids"])
    with pytest.raises(ValueError, match="input_ids hold no image tokens"):
        qwen.logits(ids, batch["pixel_values"], batch["attention_mask"],
                    image_grid_thw=batch["image_grid_thw"])
