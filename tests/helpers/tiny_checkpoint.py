"""A tiny on-disk llava-hf checkpoint that `duet_jax.load_llava(dir)` loads offline.

    path = build_tiny_checkpoint(tmp_dir)        # model + tokenizer + image processor
    model = duet_jax.load_llava(path)

The model is a random `LlavaForConditionalGeneration` (transformers 5, PyTorch)
whose text vocabulary covers the tiny SentencePiece tokenizer of
`tests.helpers.tokenizer` (`<image>` at 600, `<pad>` at 601). The CLIP tower
sees `image_size` x `image_size` images in `patch_size` patches, so the image
block is `(image_size // patch_size) ** 2` tokens. The image processor is a
`CLIPImageProcessorPil` whose resize / crop size is that image size.

Building takes a few seconds (the tokenizer is trained); tests should build it
once per module (`scope="module"` fixtures).
"""
from __future__ import annotations

import os

from tests.helpers.tokenizer import build_tiny_tokenizer

IMAGE_TOKEN_ID = 600     # first id after the tokenizer's 600-piece base vocabulary
PAD_TOKEN_ID = 601
VOCAB_SIZE = 602         # exactly the tokenizer: every generated id decodes


def tiny_hf_config(*, image_size: int = 56, patch_size: int = 14, vision_layers: int = 2,
                   text_layers: int = 4, text_width: int = 64, vision_width: int = 32):
    """HF LlavaConfig of the tiny checkpoint (default: 16 patches, 4 LM layers)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vc = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=2 * vision_width,
                          num_hidden_layers=vision_layers, num_attention_heads=4,
                          image_size=image_size, patch_size=patch_size, projection_dim=16)
    tc = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=text_width,
                     intermediate_size=int(1.5 * text_width), num_hidden_layers=text_layers,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                     bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN_ID)
    return LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN_ID,
                       image_seq_length=(image_size // patch_size) ** 2)


def build_tiny_checkpoint(directory: str, *, seed: int = 0, init_std: float = 0.5,
                          **config_kw) -> str:
    """Write model (safetensors + config.json), tokenizer and preprocessor to `directory`.

    `init_std`: every weight is redrawn from N(0, init_std^2) so that different
    images give visibly different CLS attention (the default init is nearly
    uniform, which would make every Stage-1 selection a tie). Returns `directory`.
    """
    import torch
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

    os.makedirs(directory, exist_ok=True)
    build_tiny_tokenizer(directory)
    cfg = tiny_hf_config(**config_kw)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    from tests.helpers.tiny_hf import checkpoint_init   # torch-heavy: only when building
    checkpoint_init(model, init_std)
    model.save_pretrained(directory)
    size = cfg.vision_config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                      crop_size={"height": size, "width": size})
    processor.save_pretrained(directory)
    return directory


_CACHE: dict = {}
# LLaVA-1.5's token geometry (576 patches of a 336 px image, 32 LM layers) at tiny widths:
# every llava15-* preset validates on it, and it still runs in a second.
LLAVA_SHAPED = {"image_size": 336, "patch_size": 14, "text_layers": 32}


def cached_tiny_checkpoint(**config_kw) -> str:
    """One tiny checkpoint per config per test process (built on first use, removed at
    exit), so every test file shares it and the JIT cache of its (equal) model."""
    key = tuple(sorted(config_kw.items()))
    if key not in _CACHE:
        import atexit
        import shutil
        import tempfile
        root = tempfile.mkdtemp(prefix="duet-tiny-ckpt-")
        atexit.register(shutil.rmtree, root, True)
        _CACHE[key] = build_tiny_checkpoint(os.path.join(root, "tiny-llava"), **config_kw)
    return _CACHE[key]


POPE_SUFFIX = "Answer the question using a single word or phrase."
_OBJECTS = ("dog", "cat", "car", "tree", "bird", "cup")


def patch_grid_image(seed: int, size: int = 56, patch: int = 14):
    """A size x size RGB PIL image whose patches are solid, saturated colours
    (so a greyed patch is unmistakable). Returns (image, colours [g, g, 3] uint8)."""
    import colorsys

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    g = size // patch
    colours = np.array([[tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.9, 0.9))
                         for h in row] for row in rng.random((g, g))], np.uint8)
    pixels = np.repeat(np.repeat(colours, patch, axis=0), patch, axis=1)
    return Image.fromarray(pixels), colours


def write_pope_fixture(root: str, num_questions: int = 4, image_size: int = 336,
                       patch_size: int = 14) -> dict:
    """POPE-style question file, images and coco/ labels in the official formats.

    Even questions get a square patch-grid image (no padding), odd ones a
    non-square random image (padded to a square by the pipeline). Questions
    alternate the 'adversarial' (ids 1..) and 'random' (ids 10000001..) splits.
    Returns {"questions", "images", "annotations", "colours": {index: [g, g, 3]}}.
    """
    import json

    import numpy as np
    from PIL import Image

    images = os.path.join(root, "images")
    coco = os.path.join(root, "coco")
    os.makedirs(images, exist_ok=True)
    os.makedirs(coco, exist_ok=True)
    questions, labels, colours = [], {"adversarial": [], "random": []}, {}
    for i in range(num_questions):
        name = f"COCO_val2014_{i:012d}.png"
        if i % 2 == 0:
            img, colours[i] = patch_grid_image(i, image_size, patch_size)
        else:
            rng = np.random.default_rng(100 + i)
            img = Image.fromarray((rng.random((42, 70, 3)) * 255).astype(np.uint8))
        img.save(os.path.join(images, name))
        split = "adversarial" if i % 2 == 0 else "random"
        qid = (i + 1) if split == "adversarial" else 10000001 + i
        questions.append({"question_id": qid, "image": name, "category": split,
                          "text": f"Is there a {_OBJECTS[i % len(_OBJECTS)]} in the image?\n"
                                  f"{POPE_SUFFIX}"})
        labels[split].append({"question_id": qid, "label": "yes" if i % 3 else "no"})
    q_path = os.path.join(root, "llava_pope_test.jsonl")
    with open(q_path, "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    for split, rows in labels.items():
        with open(os.path.join(coco, f"coco_pope_{split}.json"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return {"questions": q_path, "images": images, "annotations": coco, "colours": colours}
