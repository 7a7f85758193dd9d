"""Question files in their official formats, the exact prompts, and answer lines.

Used by `eval.py run`: it loads the questions, builds each prompt
(docs/EVAL.md §0, §5, §7), generates, and writes one answer line per question in the
official format, so the official scorers (and `eval.py score`) read our answer files
unchanged.

    questions = load_questions("pope", "llava_pope_test.jsonl")
    prompt = build_prompt(questions[0])   # "A chat ... USER: <image>\\nIs there ... ASSISTANT:"
    with AnswerWriter("answers.jsonl") as out:
        out.write(answer_record(questions[0], "Yes", model_id="llava-v1.5-7b"))

Pure Python: no JAX import.
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid

from duet_jax.data.conversation import IMAGE_TOKEN, LLAVA_V1_SYSTEM, VICUNA_V1_SYSTEM
from duet_jax.data.frames import VIDEO_FRAMES

from .io import ScoreError, read_json, read_jsonl
from .scoring.common import LETTER_ANSWER, require_fields, require_str

STOP_STRING = "</s>"
# model_vqa_loader's default (no script overrides it); model_vqa_science and the video
# script hard-code 1024.
DEFAULT_MAX_NEW_TOKENS = {"pope": 128, "textvqa": 128, "gqa": 128, "mme": 128, "seed": 128,
                          "sqa": 1024, "video": 1024}
JSONL_BENCHMARKS = ("pope", "textvqa", "gqa", "mme", "seed")
_VIDEO_FORMATS = (".mp4", ".avi", ".mov", ".mkv")
_SEED_VIDEO_TASKS = {"10": "ssv2_8_frame", "11": "kitchen_8_frame", "12": "breakfast_8_frame"}


@dataclasses.dataclass(frozen=True)
class Question:
    """One question, ready to prompt.

    text:          user text after the image placeholder(s), answer suffix included.
    answer_prompt: the answer line's `prompt` (LLaVA) or `question` (video) value.
    image:         image path relative to the image folder, the video name, or None
                   (text-only ScienceQA problem).
    num_images:    0, 1, or VIDEO_FRAMES `<image>` placeholders before `text`.
    original_text: the text DUET's salient-token finder reads (the loader's raw `text`,
                   ScienceQA's stripped question without the suffix, the video question).
    gt_answer:     video only: the test_a.json answer, copied into the answer line.
    """

    benchmark: str
    question_id: int | str
    text: str
    answer_prompt: str
    image: str | None
    num_images: int
    category: str | None
    original_text: str
    max_new_tokens: int
    gt_answer: str | None = None

    @property
    def system(self) -> str:
        return LLAVA_V1_SYSTEM if self.benchmark == "video" else VICUNA_V1_SYSTEM


def user_message(question: Question) -> str:
    """'<image>'*k + '\\n' + text (no start/end tokens: mm_use_im_start_end=False)."""
    if question.num_images == 0:
        return question.text
    return IMAGE_TOKEN * question.num_images + "\n" + question.text


def build_prompt(question: Question) -> str:
    """The full two-separator prompt: system, ' USER: ', message, ' ASSISTANT:'."""
    return f"{question.system} USER: {user_message(question)} ASSISTANT:"


# the official question file of each JSON-list benchmark (docs/EVAL.md §5, §7)
_JSON_FILES = {"sqa": "the JSON list llava_test_CQM-A.json",
               "video": "the JSON list test_q.json (with test_a.json beside it)"}


def _no_questions(path: str, benchmark: str) -> ScoreError:
    return ScoreError(f"{path}: holds no questions; pass the {benchmark} question file "
                      "(a run over nothing would look complete)")


def _read_json_list(path: str, benchmark: str) -> list:
    """A JSON-list question file; a JSON-lines file (the other benchmarks' format) is named
    as such instead of failing at its second line."""
    if path.endswith(".jsonl"):
        raise ScoreError(f"{path}: --benchmark {benchmark} reads {_JSON_FILES[benchmark]}, not "
                         "a JSON-lines file; pass that file (JSON lines are for "
                         f"{', '.join(JSONL_BENCHMARKS)})")
    items = read_json(path)
    if not isinstance(items, list):
        raise ScoreError(f"{path}: expected {_JSON_FILES[benchmark]}, got a JSON "
                         f"{'object' if isinstance(items, dict) else type(items).__name__}")
    if not items:
        raise _no_questions(path, benchmark)
    return items


def _load_jsonl(benchmark: str, path: str) -> list[Question]:
    records = read_jsonl(path)
    if not records:
        raise _no_questions(path, benchmark)
    require_fields(path, records, ("question_id", "image", "text"))
    for field in ("text", "image"):
        require_str(path, records, field)
    return [Question(benchmark=benchmark, question_id=r["question_id"], text=r["text"],
                     answer_prompt=r["text"], image=r["image"], num_images=1,
                     category=r.get("category"), original_text=r["text"],
                     max_new_tokens=DEFAULT_MAX_NEW_TOKENS[benchmark]) for r in records]


def _load_sqa(path: str) -> list[Question]:
    problems = _read_json_list(path, "sqa")
    questions = []
    for i, p in enumerate(problems):
        try:
            pid, value = p["id"], p["conversations"][0]["value"]
        except (KeyError, IndexError, TypeError):
            raise ScoreError(f"{path}: entry {i} needs 'id' and conversations[0].value") from None
        if not isinstance(value, str) or not isinstance(p.get("image", ""), str):
            raise ScoreError(f"{path}: entry {i} (id {pid!r}): conversations[0].value and "
                             "'image' must be strings")
        stripped = value.replace(IMAGE_TOKEN, "").strip()
        text = stripped + "\n" + LETTER_ANSWER
        has_image = "image" in p
        questions.append(Question(
            benchmark="sqa", question_id=pid, text=text,
            # The IMG subset is decided by this marker in the answer line's prompt.
            answer_prompt=(IMAGE_TOKEN + "\n" + text) if has_image else text,
            image=p["image"] if has_image else None, num_images=int(has_image),
            category=p.get("category"), original_text=stripped,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS["sqa"]))
    return questions


def _load_video(path: str) -> list[Question]:
    """test_q.json (or its folder) plus the sibling test_a.json. Questions without a GT
    answer are dropped, as the official inference loop skips them."""
    q_path = os.path.join(path, "test_q.json") if os.path.isdir(path) else path
    a_path = os.path.join(os.path.dirname(q_path), "test_a.json")
    items = _read_json_list(q_path, "video")
    gt = read_json(a_path)
    if not isinstance(gt, list):
        raise ScoreError(f"{a_path}: expected the JSON list test_a.json, got a JSON "
                         f"{'object' if isinstance(gt, dict) else type(gt).__name__}")
    answers = {}
    for i, a in enumerate(gt):
        if not isinstance(a, dict) or "question_id" not in a or "answer" not in a:
            raise ScoreError(f"{a_path}: entry {i} needs 'question_id' and 'answer'")
        answers[a["question_id"]] = a["answer"]
    questions = []
    for i, q in enumerate(items):
        if not isinstance(q, dict) or not {"video_name", "question", "question_id"} <= set(q):
            raise ScoreError(f"{q_path}: entry {i} needs 'video_name', 'question' and 'question_id'")
        if not isinstance(q["question"], str) or not isinstance(q["video_name"], str) \
                or isinstance(q["question_id"], bool) or not isinstance(q["question_id"], (str, int)):
            raise ScoreError(f"{q_path}: entry {i}: 'question' and 'video_name' must be strings, "
                             "'question_id' a string or an integer")
        if q["question_id"] not in answers:
            continue
        questions.append(Question(
            benchmark="video", question_id=q["question_id"], text=q["question"],
            answer_prompt=q["question"], image=q["video_name"], num_images=VIDEO_FRAMES,
            category=None, original_text=q["question"],
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS["video"], gt_answer=answers[q["question_id"]]))
    if not questions:
        raise ScoreError(f"{q_path}: no question has an answer in {a_path} (the official loop "
                         "skips those); pass the test_q.json / test_a.json pair of one data set")
    return questions


def load_questions(benchmark: str, path: str) -> list[Question]:
    """Questions of `benchmark` from its official question file, in file order."""
    if benchmark in JSONL_BENCHMARKS:
        return _load_jsonl(benchmark, path)
    if benchmark == "sqa":
        return _load_sqa(path)
    if benchmark == "video":
        return _load_video(path)
    raise ScoreError(f"unknown benchmark {benchmark!r}; choose one of "
                     f"{', '.join(JSONL_BENCHMARKS + ('sqa', 'video'))}")


def resolve_image_path(images_dir: str, question: Question) -> str:
    """Image file of an image question. SEED video questions map to frame 4 of the 8
    extracted frames, as DUET's loader does (its rstrip('.png') quirk included)."""
    image = question.image
    if question.benchmark == "seed" and image.startswith("SEED-Bench-video-image"):
        meta = image.split("/")[-1].split("_")
        if meta[0] not in _SEED_VIDEO_TASKS or len(meta) < 2:
            raise ScoreError(f"SEED video frame {image!r}: expected '<task 10|11|12>_<name>'")
        return os.path.join(images_dir, "SEED-Bench-video-image", "v1_video", f"task{meta[0]}",
                            _SEED_VIDEO_TASKS[meta[0]], meta[1].rstrip(".png"), "4.png")
    return os.path.join(images_dir, image)


def resolve_video_path(videos_dir: str, question: Question) -> str | None:
    """First existing <video_name>{.mp4,.avi,.mov,.mkv}; None (question skipped) if none."""
    for fmt in _VIDEO_FORMATS:
        candidate = os.path.join(videos_dir, question.image + fmt)
        if os.path.exists(candidate):
            return candidate
    return None


def clean_output(text: str, benchmark: str) -> str:
    """Decoded output (special tokens skipped) -> answer text: strip; video also drops
    a trailing '</s>' and strips again."""
    text = text.strip()
    if benchmark == "video":
        if text.endswith(STOP_STRING):
            text = text[:-len(STOP_STRING)]
        text = text.strip()
    return text


def answer_record(question: Question, text: str, model_id: str, answer_id: str | None = None) -> dict:
    """One answer line in the official format of the question's benchmark."""
    if question.benchmark == "video":
        return {"id": question.question_id, "question": question.answer_prompt,
                "answer": question.gt_answer, "pred": text}
    return {"question_id": question.question_id, "prompt": question.answer_prompt, "text": text,
            "answer_id": answer_id or uuid.uuid4().hex[:22], "model_id": model_id, "metadata": {}}


class AnswerWriter:
    """Appends answer lines, flushing each, so an interrupted run keeps what it wrote."""

    def __init__(self, path: str, append: bool = False):
        self.path = path
        self._file = open(path, "a" if append else "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:   # disk full mid-run: name the file (the finished lines stay)
            raise OSError(e.errno, e.strerror, self.path) from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def question_key(question: Question):
    """Identity of a question in an answer file: (question_id, prompt) for the LLaVA
    benchmarks (TextVQA's question_id is an image id, MME's names an image with two
    questions), the id for video."""
    if question.benchmark == "video":
        return question.question_id
    return (question.question_id, question.answer_prompt)


def answered_keys(path: str) -> set:
    """question_key of every line already in an answer file (for resuming a run)."""
    if not os.path.exists(path):
        return set()
    keys = set()
    for r in read_jsonl(path):
        keys.add(r["id"] if "pred" in r else (r.get("question_id"), r.get("prompt")))
    return keys
