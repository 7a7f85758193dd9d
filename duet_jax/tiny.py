"""A tiny random LLaVA-1.5-shaped checkpoint to try the API, `convert` and `eval.py` on.

    python -m duet_jax.tiny --out llava-tiny [--pope pope-tiny]      (or: duet-tiny ...)

`--out`: an HF directory (`LlavaForConditionalGeneration` layout: model.safetensors,
config.json, tokenizer and CLIP image processor files) with LLaVA-1.5's token geometry,
336 px images in 14 px patches = 576 image tokens and a 32-layer LM, so every `llava15-*`
preset applies (Stage 2 at layers 16 and 24), at tiny widths (CLIP 32, LM 64): it loads,
converts and generates in seconds on a CPU. The weights are random (seeded), the tokenizer
a real Llama-style SentencePiece model trained here on the bundled data set's text, so the
answers are fluent nonsense: it shows the machinery, not accuracy. Nothing is downloaded
and PyTorch is not needed.

`--pope`: a few POPE questions in the official layout beside it (`llava_pope_test.jsonl`,
`val2014/*.png`, `coco/coco_pope_{adversarial,popular,random}.json`; pictures from the
miniature's scene generator), for `eval.py run` and `eval.py score`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from duet_jax.cli import Parser, guarded, quiet_libraries
from duet_jax.resources import package_path

IMAGE_SIZE, PATCH_SIZE = 336, 14
VOCAB_SIZE = 600             # SentencePiece pieces; <image> and <pad> come after them
PROMPTS = ("What is in the image?", "Describe the picture in one sentence.",
           "Is there a red circle in the image? Answer the question using a single word or "
           "phrase.", "How many shapes are there?", "What colour is the square?")


def sizes(text_layers: int = 32, text_width: int = 64, vision_layers: int = 3,
          vision_width: int = 32):
    from duet_jax.training.config import RandomModelConfig

    return RandomModelConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                             vision_hidden_size=vision_width,
                             vision_intermediate_size=2 * vision_width,
                             vision_layers=vision_layers, vision_heads=4,
                             text_hidden_size=text_width, text_intermediate_size=2 * text_width,
                             text_layers=text_layers, text_heads=4, text_kv_heads=4,
                             tokenizer_vocab_size=VOCAB_SIZE)


def _corpus() -> list:
    """The tokenizer's training text: the bundled 24-record data set rendered in the
    vicuna_v1 template, plus a few questions like the README's."""
    from duet_jax.training.random_model import corpus_from_records

    with open(package_path("data", "assets", "tiny_llava.json"), encoding="utf-8") as f:
        records = json.load(f)
    return corpus_from_records(records) + list(PROMPTS) * 4


def random_params(model_cfg, seed: int = 0) -> dict:
    """Seeded NumPy params of `duet_jax.models.llava.LlavaModel(model_cfg)` (the stacked
    training layout). Norm scales near 1, matrices N(0, (0.5 / sqrt(fan_in))^2): large
    enough that different images get visibly different CLS attention (a 0.02 init makes
    every Stage-1 choice a tie)."""
    import jax

    from duet_jax.models.llava import LlavaModel

    shapes = jax.eval_shape(LlavaModel(model_cfg).init, jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        shape = leaf.shape
        if name.endswith("scale"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name.endswith("bias") or len(shape) == 1:
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)
        stacked = name.split("/")[1] == "layers"
        fan_in = (shape[-1] if name.endswith("embedding")
                  else int(np.prod(shape[1 if stacked else 0:-1])))
        return (0.5 / np.sqrt(fan_in) * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def build(out: str, *, seed: int = 0, text_layers: int = 32, text_width: int = 64,
          vision_layers: int = 3, vision_width: int = 32, flag: str = "--out") -> dict:
    """Write the tiny HF checkpoint to `out` (which must not exist or be empty)."""
    from transformers import AutoTokenizer

    from duet_jax.checkpoints.convert import staged_output, write_hf
    from duet_jax.training.random_model import build_tokenizer, random_llava_config

    with tempfile.TemporaryDirectory(prefix="duet-tiny-") as tmp:
        assets = build_tokenizer(os.path.join(tmp, "assets"), _corpus(), VOCAB_SIZE, IMAGE_SIZE)
        tok = AutoTokenizer.from_pretrained(assets, local_files_only=True)
        model_cfg = random_llava_config(
            sizes(text_layers, text_width, vision_layers, vision_width), vocab_size=len(tok),
            image_token_index=int(tok.convert_tokens_to_ids("<image>")),
            pad_token_id=tok.pad_token_id)
        params = random_params(model_cfg, seed)
        with staged_output(out, flag) as stage:
            info = write_hf(stage, params, model_cfg.to_hf(), [(assets, None)],
                            source="duet_jax.tiny", progress=False)
    return dict(info, config=model_cfg)


def write_pope_sample(root: str, per_split: int = 2, seed: int = 0) -> dict:
    """`per_split` POPE questions per category (half of them "yes") in the official layout
    under `root`; returns the paths `eval.py run/score` take."""
    import random

    from duet_jax.miniature import tasks
    from duet_jax.miniature.scenes import make_scene, rng_for

    images, coco = os.path.join(root, "val2014"), os.path.join(root, "coco")
    os.makedirs(images, exist_ok=True)
    os.makedirs(coco, exist_ok=True)
    questions = []
    for s, category in enumerate(tasks.POPE_SPLITS):
        labels, index = [], 0
        while len(labels) < per_split:
            image, scene = make_scene(seed, f"tiny-pope-{category}", index)
            rng: random.Random = rng_for(seed, f"tiny-pope-{category}-q", index)
            qa = tasks.pope_question(scene, rng, len(labels) % 2 == 0, category)
            index += 1
            if qa is None:
                continue
            qid = s * 10_000_000 + len(labels) + 1      # POPE numbers each split from its base
            name = f"COCO_val2014_{qid:012d}.png"
            image.save(os.path.join(images, name))
            questions.append({"question_id": qid, "image": name, "text": qa.text,
                              "category": category})
            labels.append({"question_id": qid, "label": qa.answer.lower()})
        with open(os.path.join(coco, f"coco_pope_{category}.json"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in labels)
    path = os.path.join(root, "llava_pope_test.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    return {"questions": path, "images": images, "annotations": coco}


def main(argv: Optional[list] = None) -> int:
    p = Parser(prog="duet-tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, metavar="DIR",
                   help="checkpoint directory to write (must not exist, or be empty)")
    p.add_argument("--pope", metavar="DIR", help="also write a few POPE questions here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-layers", type=_positive, default=32,
                   help="LM layers (default 32, LLaVA-1.5-7B's: the llava15-* presets drop "
                        "at layers 16 and 24)")
    p.add_argument("--text-width", type=_positive, default=64, help="LM hidden size")
    args = p.parse_args(argv)
    quiet_libraries()
    return guarded(_write, args, undone="no checkpoint was written")


def _positive(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _write(args) -> int:
    from duet_jax.errors import InputError
    from duet_jax.evaluation.io import check_output_path

    if args.pope:      # checked before the checkpoint is written, not after
        check_output_path(args.pope, "--pope", folder=True)
    t0 = time.perf_counter()
    try:
        info = build(args.out, seed=args.seed, text_layers=args.text_layers,
                     text_width=args.text_width)
    except ValueError as e:    # a size the configs refuse (e.g. --text-layers 0): bad input
        if isinstance(e, InputError):
            raise
        raise InputError(" ".join(str(e).split())) from None
    cfg = info["config"]
    print(f"wrote a random LLaVA-1.5-shaped checkpoint to {args.out} in "
          f"{time.perf_counter() - t0:.1f} s: {cfg.vision.image_size} px / {cfg.vision.patch_size} "
          f"px patches = {cfg.image_seq_length} image tokens, {cfg.text.num_hidden_layers} LM "
          f"layers, {info['bytes'] / 2**20:.1f} MiB, {', '.join(info['assets'])}")
    if args.pope:
        paths = write_pope_sample(args.pope, seed=args.seed)
        print(f"wrote POPE questions {paths['questions']}, images {paths['images']}, "
              f"annotations {paths['annotations']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
