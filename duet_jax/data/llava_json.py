"""The LLaVA instruction-tuning JSON format (llava_v1_5_mix665k.json style).

A file is a JSON list of records:

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}, ...]}

`image` is optional (text-only record, e.g. ShareGPT); with an image the first
human turn holds exactly one `<image>` and no other turn holds any. Every
validation error names the record index. `SampleEncoder` turns one record into
a `TrainingExample` plus its pixels; batching lives in `duet_jax.data.loader`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from duet_jax.errors import InputError
from duet_jax.data.conversation import IMAGE_TOKEN, get_template
from duet_jax.data.images import preprocess_image, processor_output_shape
from duet_jax.data.tokenize import TrainingExample, encode_training

ROLES = ("human", "gpt")


class RecordError(InputError):
    """A malformed LLaVA-JSON record; the message starts with `record <index>`."""


def _fail(index: int, problem: str) -> None:
    raise RecordError(f"record {index}: {problem}")


def validate_record(record: Any, index: int, *, template: str = "vicuna_v1") -> None:
    """Check one record's structure (raises RecordError naming `index`)."""
    if not isinstance(record, dict):
        _fail(index, f"expected a JSON object, got {type(record).__name__}")
    if "id" in record and not isinstance(record["id"], (str, int)):
        _fail(index, f"'id' must be a string or int, got {type(record['id']).__name__}")
    image = record.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        _fail(index, f"'image' must be a non-empty relative path string, got {image!r} "
                     f"(multi-image records are not supported)")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        _fail(index, "'conversations' must be a non-empty list of {from, value} turns")
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            _fail(index, f"turn {j}: 'from' must be one of {ROLES}, got "
                         f"{turn.get('from') if isinstance(turn, dict) else turn!r}")
        if not isinstance(turn.get("value"), str):
            _fail(index, f"turn {j}: 'value' must be a string")
    start = 1 if turns[0]["from"] == "gpt" else 0    # LLaVA drops a leading gpt turn
    if start == len(turns):
        _fail(index, "no human turn after dropping the leading gpt turn")
    for j in range(start, len(turns)):
        expected = ROLES[(j - start) % 2]
        if turns[j]["from"] != expected:
            _fail(index, f"turn {j}: expected '{expected}' (turns must alternate human/gpt)")
    counts = [turn["value"].count(IMAGE_TOKEN) for turn in turns]
    if image is None and sum(counts):
        _fail(index, f"'{IMAGE_TOKEN}' appears in a record without 'image'; remove it or add "
                     f"the image")
    if image is not None and (counts[start] != 1 or sum(counts) != 1):
        _fail(index, f"a record with 'image' needs exactly one '{IMAGE_TOKEN}', in the first "
                     f"human turn (turn {start}); found {counts}")
    if get_template(template).style == "plain":
        if image is None or len(turns) - start != 2:
            _fail(index, "the plain (pretraining) template needs an image and exactly one "
                         "human + one gpt turn")


def _parse(f, path: str):
    """The JSON list (or JSON-lines records) of an open data file; RecordError names the
    line and column where the text stops being JSON."""
    try:
        if not path.endswith(".jsonl"):
            return json.load(f)
        records = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecordError(f"{path}: line {number} is not JSON ({e.msg}, column "
                                      f"{e.colno}); fix or remove that line") from None
        return records
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                          f"{e.colno}; a truncated file?); give a complete LLaVA-JSON file") from None
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); give a "
                          "LLaVA-JSON file") from None


def load_records(path: str, *, template: str = "vicuna_v1", image_folder: Optional[str] = None,
                 check_images: bool = False) -> List[dict]:
    """Read and validate a LLaVA-JSON file (a JSON list; `.jsonl` with one record a line also works).

    With `check_images`, every referenced image must exist under `image_folder`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, encoding="utf-8") as f:
        records = _parse(f, path)
    if not isinstance(records, list):
        raise RecordError(f"{path}: expected a JSON list of records, got a JSON "
                          f"{type(records).__name__}; give a LLaVA-JSON file ([{{...}}, ...])")
    if not records:
        raise RecordError(f"{path}: the data set is empty; give a file with records")
    for index, record in enumerate(records):
        validate_record(record, index, template=template)
        if check_images and record.get("image") is not None:
            full = os.path.join(image_folder or "", record["image"])
            if not os.path.isfile(full):
                _fail(index, f"image file not found: {full} (check image_folder)")
            if os.path.getsize(full) == 0:
                _fail(index, f"image file is empty: {full}; replace it or drop the record")
    return records


@dataclasses.dataclass(frozen=True)
class EncodedSample:
    """One sample ready for collation: example [n] tokens and pixels [3, H, W] or None."""
    index: int
    example: TrainingExample
    pixel_values: Optional[np.ndarray]


class SampleEncoder:
    """Record -> EncodedSample (tokenize, mask labels, load and preprocess the image).

    Thread-safe: HF tokenizers are not safe to call concurrently (their
    truncation/padding state is shared), so tokenization runs under a lock; image
    decoding and processing, the expensive part, run in parallel.
    """

    def __init__(self, tokenizer, image_processor, *, image_folder: str, template: str,
                 image_token_index: int, image_seq_length: int, max_length: int):
        if max_length < 1 or image_seq_length < 1:
            raise ValueError(f"max_length ({max_length}) and image_seq_length "
                             f"({image_seq_length}) must be positive")
        get_template(template)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_folder = image_folder
        self.template = template
        self.image_token_index = int(image_token_index)
        self.image_seq_length = int(image_seq_length)
        self.max_length = int(max_length)
        self.image_shape = processor_output_shape(image_processor)
        self._lock = threading.Lock()

    def __call__(self, record: dict, index: int) -> EncodedSample:
        turns: Sequence[Tuple[str, str]] = [(t["from"], t["value"]) for t in record["conversations"]]
        has_image = record.get("image") is not None
        with self._lock:
            example = encode_training(
                turns, self.tokenizer, template=self.template, has_image=has_image,
                image_token_index=self.image_token_index,
                image_seq_length=self.image_seq_length, max_length=self.max_length)
        pixels = None
        if example.has_image:
            path = os.path.join(self.image_folder, record["image"])
            try:
                pixels = preprocess_image(path, self.image_processor)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"record {index}: {e}") from None
            except OSError as e:
                if e.errno is None:     # PIL: not an image, or a cut one (the file's fault)
                    _fail(index, f"cannot decode image {path} ({e}); replace the file or "
                                 "drop the record")
                raise OSError(e.errno, f"record {index}: cannot read image ({e.strerror})",
                              path) from None
            except (ValueError, SyntaxError) as e:   # PIL's other decoder complaints
                _fail(index, f"cannot decode image {path} ({e}); replace the file or drop "
                             "the record")
        return EncodedSample(index=index, example=example, pixel_values=pixels)
