"""Write the miniature data set: LLaVA-JSON training records and POPE / TextVQA / GQA
evaluation files in the official formats (docs/EVAL.md §1-3), for train/val/test splits.

    python -m duet_jax.miniature.dataset --out .cache/miniature/data

Layout under ``out``::

    images/<split>/<index>.png
    train.json                                   LLaVA records, multi-turn
    text.json                                    the same scenes as captions, text only
    <split>/pope/questions.jsonl                 + coco/coco_pope_<category>.json labels
    <split>/textvqa/questions.jsonl              + TextVQA_0.5.1_val.json
    <split>/gqa/questions.jsonl                  + testdev_balanced_questions.json
    manifest.json                                the DataConfig (a cache key), written last

Deterministic: every scene and question comes from its own seeded stream, so
the files depend only on the DataConfig.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
from typing import Callable, Dict, List, Optional

from duet_jax.miniature import tasks
from duet_jax.miniature.scenes import make_scene, rng_for

MANIFEST = "manifest.json"
EVAL_SPLITS = ("val", "test")
BENCHMARKS = ("pope", "textvqa", "gqa")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Sizes of the data set. Eval counts are questions per split (POPE: per category)."""
    seed: int = 0
    train_images: int = 6000
    layout: int = 6         # bump when the questions change (re-keys every cache)
    val_pope_per_split: int = 20
    val_textvqa: int = 30
    val_gqa: int = 40
    test_pope_per_split: int = 60
    test_textvqa: int = 180       # >= 180 questions a benchmark; GQA: 60 of each kind
    test_gqa: int = 240

    def counts(self, split: str) -> Dict[str, int]:
        prefix = "val" if split == "val" else "test"
        return {b: getattr(self, f"{prefix}_{b}" + ("_per_split" if b == "pope" else ""))
                for b in BENCHMARKS}


def _write_jsonl(path: str, rows: List[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def _draw_questions(cfg: DataConfig, split: str, stream: str, count: int,
                    make: Callable[[object, random.Random, int], Optional[tasks.QA]]):
    """`count` (scene index, QA) pairs: consecutive scenes of the `stream` sub-split,
    skipping scenes that cannot carry the question."""
    out, index = [], 0
    while len(out) < count:
        _, scene = make_scene(cfg.seed, f"{split}-{stream}", index)
        qa = make(scene, rng_for(cfg.seed, f"{split}-{stream}-q", index), len(out))
        if qa is not None:
            out.append((index, qa))
        index += 1
        if index > 50 * (count + 1):
            raise RuntimeError(f"cannot draw {count} {stream} questions; check the scene settings")
    return out


def write_train(out: str, cfg: DataConfig) -> str:
    """train.json (image records) and text.json (each scene's caption in place of its
    picture, caption turn dropped: the text-only stage)."""
    os.makedirs(os.path.join(out, "images", "train"), exist_ok=True)
    records, text_records = [], []
    for i in range(cfg.train_images):
        img, scene = make_scene(cfg.seed, "train", i)
        rel = f"images/train/{i:05d}.png"
        img.save(os.path.join(out, rel))
        qas = tasks.training_questions(scene, rng_for(cfg.seed, "train-q", i))
        records.append(tasks.llava_record(f"train-{i:05d}", rel, qas))
        caption = next(qa.answer for qa in qas if qa.kind == "caption")
        text_records.append(tasks.text_record(f"text-{i:05d}", caption,
                                              [qa for qa in qas if qa.kind != "caption"]))
    _write_json(os.path.join(out, "text.json"), text_records)
    path = os.path.join(out, "train.json")
    _write_json(path, records)
    return path


def _question_row(qid, image: str, qa: tasks.QA) -> dict:
    return {"question_id": qid, "image": image, "text": qa.text, "category": qa.category}


def write_pope(out: str, cfg: DataConfig, split: str, per_split: int) -> None:
    rows, labels = [], {}
    for s, category in enumerate(tasks.POPE_SPLITS):
        stream = f"pope-{category}"
        drawn = _draw_questions(cfg, split, stream, per_split,
                                lambda sc, r, k, c=category:
                                tasks.pope_question(sc, r, k % 2 == 0, c))
        for k, (index, qa) in enumerate(drawn):
            image = _save_stream(out, cfg, split, stream, index)
            # POPE numbers each split's questions from its own base (docs/EVAL.md §1).
            rows.append(_question_row(s * 10_000_000 + k + 1, image, qa))
            labels.setdefault(category, []).append({"question_id": s * 10_000_000 + k + 1,
                                                    "label": qa.answer.lower()})
    _write_jsonl(os.path.join(out, split, "pope", "questions.jsonl"), rows)
    for category, lines in labels.items():
        _write_jsonl(os.path.join(out, split, "pope", "coco", f"coco_pope_{category}.json"), lines)


def _save_stream(out: str, cfg: DataConfig, split: str, stream: str, index: int) -> str:
    rel = f"images/{split}-{stream}/{index:05d}.png"
    path = os.path.join(out, rel)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        make_scene(cfg.seed, f"{split}-{stream}", index)[0].save(path)
    return rel


def write_textvqa(out: str, cfg: DataConfig, split: str, count: int) -> None:
    drawn = _draw_questions(cfg, split, "textvqa", count,
                            lambda sc, r, k: tasks.read_question(sc, r))
    rows, data = [], []
    for index, qa in drawn:
        image = _save_stream(out, cfg, split, "textvqa", index)
        image_id = f"{split[:1]}{index:015x}"       # TextVQA ids are 16-hex-like strings
        rows.append(_question_row(image_id, image, qa))
        data.append({"image_id": image_id, "question": qa.question, "answers": [qa.answer] * 10})
    _write_jsonl(os.path.join(out, split, "textvqa", "questions.jsonl"), rows)
    _write_json(os.path.join(out, split, "textvqa", "TextVQA_0.5.1_val.json"), {"data": data})


def write_gqa(out: str, cfg: DataConfig, split: str, count: int) -> None:
    kinds = tasks.GQA_KINDS
    drawn = _draw_questions(cfg, split, "gqa", count,
                            lambda sc, r, k: tasks.GQA_MAKERS[kinds[k % len(kinds)]](sc, r))
    rows, annotations = [], {}
    for k, (index, qa) in enumerate(drawn):
        image = _save_stream(out, cfg, split, "gqa", index)
        qid = str(20_000_000 + k)
        rows.append(_question_row(qid, image, qa))
        structural = "choose" if qa.kind == "position" else "query"
        annotations[qid] = {"imageId": image, "question": qa.question, "answer": qa.answer,
                            "isBalanced": True,
                            "types": {"structural": structural, "semantic": "attr",
                                      "detailed": qa.kind}}
    _write_jsonl(os.path.join(out, split, "gqa", "questions.jsonl"), rows)
    _write_json(os.path.join(out, split, "gqa", "testdev_balanced_questions.json"), annotations)


def scene_of(image: str, seed: int):
    """The Scene drawn into an evaluation image `images/<split>-<stream>/<index>.png`."""
    stream, name = os.path.split(os.path.relpath(image, "images"))
    return make_scene(seed, stream, int(os.path.splitext(name)[0]))[1]


def read_manifest(out: str) -> DataConfig:
    with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
        return DataConfig(**json.load(f))


def eval_paths(out: str, split: str, benchmark: str) -> Dict[str, str]:
    """questions / annotations / images paths of one evaluation benchmark."""
    folder = os.path.join(out, split, benchmark)
    annotations = {"pope": os.path.join(folder, "coco"),
                   "textvqa": os.path.join(folder, "TextVQA_0.5.1_val.json"),
                   "gqa": os.path.join(folder, "testdev_balanced_questions.json")}[benchmark]
    return {"questions": os.path.join(folder, "questions.jsonl"), "annotations": annotations,
            "images": out}


def is_complete(out: str, cfg: DataConfig) -> bool:
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return json.load(f) == dataclasses.asdict(cfg)


def generate(out: str, cfg: DataConfig = DataConfig()) -> str:
    """Write (or reuse, when the manifest matches) the data set; returns `out`."""
    if is_complete(out, cfg):
        return out
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, MANIFEST)):
        os.remove(os.path.join(out, MANIFEST))
    write_train(out, cfg)
    for split in EVAL_SPLITS:
        counts = cfg.counts(split)
        write_pope(out, cfg, split, counts["pope"])
        write_textvqa(out, cfg, split, counts["textvqa"])
        write_gqa(out, cfg, split, counts["gqa"])
    _write_json(os.path.join(out, MANIFEST), dataclasses.asdict(cfg))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(".cache", "miniature", "data"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=DataConfig.train_images)
    args = p.parse_args(argv)
    cfg = DataConfig(seed=args.seed, train_images=args.train_images)
    print(f"data set written to {generate(args.out, cfg)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
