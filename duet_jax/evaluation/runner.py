"""`eval.py run`: batched greedy generation over a benchmark's question file.

    python eval.py run --model M --benchmark pope --questions Q.jsonl --images DIR \\
                       --answers OUT.jsonl [--reduction llava15-duet-64] [--batch-size 8]

* Prompts are the official ones (docs/EVAL.md §0/§5/§7, `questions.build_prompt`);
  decoding is greedy, `max_new_tokens` 128 (1024 for sqa/video) unless given.
* Batches follow question order (no length sorting); image and text-only
  questions (ScienceQA) never share a batch, and text-only ones run unreduced
  (there is nothing to reduce and Stage 2 needs an image in every sample). Each
  batch is padded to `--batch-size` rows (copies of its last sample, discarded)
  and to a multiple of `--length-bucket` tokens, so few shapes are compiled.
  Right padding is masked, so it changes no answer.
* Resumable: every answer line is appended and flushed as soon as its batch is
  decoded; a restarted run with the same command skips answered questions (a
  partial last line left by a kill is dropped and redone) and the file is
  rewritten in question-file order at the end. `<answers>.run.json` records
  the settings, and resuming with different ones is refused.
* Bad input (unknown benchmark, malformed question line, missing image, answer
  file of another question file, ...) raises `ScoreError`: one `error:` line and
  exit 2 from eval.py.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Optional

import numpy as np

from . import answer_file, media
from .questions import (DEFAULT_MAX_NEW_TOKENS, AnswerWriter, Question, answer_record,
                        clean_output, load_questions, resolve_image_path)
from .scoring import BENCHMARKS
from .io import ScoreError, check_output_path

DEFAULT_LENGTH_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One benchmark run; `reduction` is already resolved (None = unreduced)."""
    benchmark: str
    questions: str
    images: str
    answers: str
    reduction: object = None
    batch_size: int = 1
    max_new_tokens: Optional[int] = None
    save_kept: int = 0
    kept_dir: Optional[str] = None
    limit: Optional[int] = None
    length_bucket: int = DEFAULT_LENGTH_BUCKET
    model_path: str = ""
    dtype: str = "float32"
    clip_text_tower: Optional[str] = None     # CDPruner's CLIPModel dir (docs/BASELINES.md §9)

    @property
    def reduction_name(self) -> str:
        return "none" if self.reduction is None else self.reduction.name

    @property
    def model_id(self) -> str:
        return os.path.basename(os.path.normpath(self.model_path)) or "model"


def _reduction_file(path: str):
    """The config a .json/.yaml reduction file holds; a parse error names the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                import yaml
                try:
                    value = yaml.safe_load(f)
                except yaml.YAMLError as e:
                    mark = getattr(e, "problem_mark", None)
                    where = f"{path}:{mark.line + 1}" if mark is not None else path
                    problem = getattr(e, "problem", None) or "not valid YAML"
                    raise ScoreError(f"--reduction {where}: malformed YAML ({problem}); fix the "
                                     "file or pass a preset name") from None
            else:
                try:
                    value = json.load(f)
                except json.JSONDecodeError as e:
                    raise ScoreError(f"--reduction {path}:{e.lineno}: malformed JSON ({e.msg}); "
                                     "fix the file or pass a preset name") from None
    except UnicodeDecodeError:
        raise ScoreError(f"--reduction {path}: not a text file; pass a .json/.yaml config "
                         "or a preset name") from None
    if value is None:
        raise ScoreError(f"--reduction {path}: the file is empty; write the reduction config "
                         "in it, or pass 'none' for no reduction")
    return value


def parse_reduction(value: Optional[str]):
    """None/'none', a preset name, a .json/.yaml config file, or an inline JSON object
    -> ReductionConfig or None."""
    from duet_jax.reduction import resolve_reduction
    try:
        if value is not None and value.strip().startswith("{"):
            return resolve_reduction(json.loads(value))
        if value is not None and value.endswith((".json", ".yaml", ".yml")) \
                and not os.path.isfile(value):
            raise ScoreError(f"--reduction {value}: file not found; pass an existing config "
                             "file or a preset name")
        if value is not None and os.path.isfile(value):
            return resolve_reduction(_reduction_file(value))
        return resolve_reduction(value)
    except (ValueError, TypeError, KeyError) as e:
        if isinstance(e, ScoreError):
            raise
        raise ScoreError(f"--reduction {value!r}: {' '.join(str(e).splitlines())}") from None


def check_args(benchmark: str, batch_size: int, max_new_tokens, limit, save_kept,
               length_bucket) -> None:
    if benchmark not in BENCHMARKS:
        raise ScoreError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    for name, value, low in (("--batch-size", batch_size, 1),
                             ("--max-new-tokens", max_new_tokens, 1), ("--limit", limit, 0),
                             ("--save-kept", save_kept, 0), ("--length-bucket", length_bucket, 1)):
        if value is not None and value < low:
            raise ScoreError(f"{name} must be >= {low}, got {value}")


def load_model(path: str, dtype: str, clip_text_tower: Optional[str] = None):
    """duet_jax.load_llava with load errors turned into one-line ScoreErrors."""
    import duet_jax
    try:
        model = duet_jax.load_llava(path, dtype=dtype, clip_text_tower=clip_text_tower)
        model.tokenizer     # a missing tokenizer is a load error, not one in mid-run
        return model
    except (OSError, ValueError, KeyError) as e:
        message = " ".join(str(e).splitlines())
        raise ScoreError(f"cannot load the model from {path}: {message}") from None


def run_settings(spec: RunSpec, max_new_tokens: int) -> dict:
    red = None if spec.reduction is None else spec.reduction.to_dict()
    tower = {} if spec.clip_text_tower is None else {
        "clip_text_tower": os.path.abspath(spec.clip_text_tower)}
    return {"benchmark": spec.benchmark, "model": os.path.abspath(spec.model_path),
            "reduction": red, "max_new_tokens": max_new_tokens, "dtype": spec.dtype,
            "questions": os.path.abspath(spec.questions), **tower}


def answer_id(spec: RunSpec, index: int) -> str:
    """Deterministic, unique per question: a resumed file is byte-identical."""
    seed = f"{spec.model_id}|{spec.reduction_name}|{spec.benchmark}|{index}"
    return hashlib.sha1(seed.encode()).hexdigest()[:22]


def plan_batches(questions: list[Question], pending: list[int], batch_size: int,
                 shape_key=None) -> list[list[int]]:
    """Consecutive pending questions, image and text-only kept apart, in order of
    each batch's first question. `shape_key(question)`: image questions with
    different keys (LLaVA-NeXT's canonical sizes) never share a batch, so every
    batch has one static shape."""
    streams: dict = {}
    for i in pending:
        key = questions[i].image is not None
        if key and shape_key is not None:
            key = shape_key(questions[i])
        streams.setdefault(key, []).append(i)
    batches = [s[k:k + batch_size] for s in streams.values() for k in range(0, len(s), batch_size)]
    return sorted(batches, key=lambda b: b[0])


def encode_batch(model, questions: list[Question], idxs: list[int], images_dir: str,
                 batch_size: int, bucket: int) -> dict:
    """Right-padded batch of exactly `batch_size` rows and a bucketed length. The model gets
    each question's user text: its `encode` wraps it in the family's template (vicuna_v1
    for LLaVA, exactly `build_prompt(question)`, so the `salient` query set can find the
    question in it; llava_v1 with one `<video>` for Video-LLaVA)."""
    fill = batch_size - len(idxs)
    prompts = [questions[i].text for i in idxs]
    prompts += [prompts[-1]] * fill
    if questions[idxs[0]].benchmark == "video":    # a video model (checked in run)
        videos = [media.load_video_frames(images_dir, questions[i], model.config.num_frames)
                  for i in idxs]
        batch = model.encode(prompts, videos=videos + [videos[-1]] * fill)
    else:
        images = [media.load_question_image(images_dir, questions[i]) for i in idxs]
        batch = model.encode(prompts, images + [images[-1]] * fill)
    return model.pad_length(batch, bucket)


def run_media(benchmark: str) -> str:
    """What a benchmark shows the model: "video" or "image"."""
    return "video" if benchmark == "video" else "image"


def safe_name(value) -> str:
    """A file-name-safe form of a question id or reduction name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value))[:80]


def _save_kept(model, spec: RunSpec, question: Question, index: int, batch: dict, row: int,
               forward, answer: str) -> None:
    from . import kept_tokens as kt
    from duet_jax.reduction import average_visual_tokens
    cfg, red = model.config, spec.reduction
    proc = model.image_processor
    image = kt.input_image(batch["pixel_values"][row], proc.image_mean, proc.image_std)
    merge = forward.features.merge
    if merge is not None:
        positions = np.asarray(merge.positions[row])
        block = kt.block_map(cfg.vision.num_patches, positions=positions,
                             member_positions=np.asarray(merge.member_positions[row]),
                             member_anchor=np.asarray(merge.member_anchor[row]),
                             num_dominant=min(red.stage1.dominant, len(positions)))
    else:
        block = kt.block_map(cfg.vision.num_patches,
                             with_cls=cfg.vision_feature_select_strategy == "full")
    kept = [np.asarray(k[row]) for k in forward.kept]
    boundaries = []
    if red is not None and red.stage2 is not None:
        counts = red.image_counts(block.num_rows)
        # A boundary runs only while tokens remain (duet_jax.models.segments).
        boundaries = [l for s, l in enumerate(red.stage2.layers) if counts[s] > 0]
    avg = average_visual_tokens(red, cfg.vision.num_patches, cfg.text.num_hidden_layers)
    title = (f"{spec.reduction_name} - question {question.question_id!r}: {block.num_rows} image "
             f"tokens enter the LM, {avg:.1f} per layer on average")
    os.makedirs(spec.kept_dir, exist_ok=True)
    path = os.path.join(spec.kept_dir, f"{index:05d}_{safe_name(question.question_id)}.png")
    kt.save_kept_picture(path, image, cfg.vision.patch_size, block, kept=kept,
                         boundaries=boundaries[:len(kept)], with_stage1=merge is not None,
                         title=title, question=question.text, answer=answer)


def _progress(total: int, desc: str):
    from duet_jax.progress import progress_bar
    return progress_bar(total=total, desc=desc, unit="q")


def generate_answers(model, spec: RunSpec, questions: list[Question], pending: list[int],
                     max_new_tokens: int) -> dict:
    """Generate and append answers for `pending` (question indices). Returns stats."""
    check_reduction(model, spec)
    shape_key = lambda q: model.shape_key(resolve_image_path(spec.images, q))  # noqa: E731
    batches = plan_batches(questions, pending, spec.batch_size, shape_key)
    writer = AnswerWriter(spec.answers, append=True)
    tokens = 0
    start = time.perf_counter()
    bar = _progress(len(pending), f"{spec.benchmark} [{spec.reduction_name}]")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    submit = lambda b: pool.submit(encode_batch, model, questions, b, spec.images,  # noqa: E731
                                   spec.batch_size, spec.length_bucket)
    try:
        future = submit(batches[0]) if batches else None
        for n, idxs in enumerate(batches):
            batch = future.result()
            future = submit(batches[n + 1]) if n + 1 < len(batches) else None
            has_image = questions[idxs[0]].image is not None
            out = model.generate_batch(batch, max_new_tokens=max_new_tokens,
                                       reduction=spec.reduction if has_image else None)
            out_tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
            for row, i in enumerate(idxs):
                text = model.tokenizer.decode(out_tokens[row, :lengths[row]],
                                              skip_special_tokens=True)
                text = clean_output(text, spec.benchmark)
                writer.write(answer_record(questions[i], text,
                                           model_id=spec.model_id, answer_id=answer_id(spec, i)))
                # zoo `select` presets replace the block before the LM: no Stage-1 map to
                # draw (docs/BASELINES.md §9), so --save-kept draws nothing for them
                if has_image and i < spec.save_kept and model.kept_pictures \
                        and spec.benchmark != "video" and (spec.reduction is None
                                                           or spec.reduction.select is None):
                    _save_kept(model, spec, questions[i], i, batch, row, out.forward, text)
            tokens += int(lengths[:len(idxs)].sum())
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):.1f} tok/s")
            bar.update(len(idxs))
    finally:
        bar.close()
        writer.close()
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start
    return {"answered": len(pending), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0}


def check_reduction(model, spec: RunSpec) -> None:
    """The reduction fits this model (budgets, layers, media): before anything is written."""
    if spec.reduction is not None:
        try:
            model.reduction(spec.reduction, media=run_media(spec.benchmark))
        except ValueError as e:
            raise ScoreError(f"--reduction {spec.reduction_name}: {e}") from None


def _drop_if_unanswered(answers: str, meta: str) -> None:
    """After a failed run that wrote no answer: remove the empty answer file and its
    settings, so nothing half-made blocks (or looks like) the corrected rerun."""
    if os.path.isfile(answers) and os.path.getsize(answers) == 0:
        os.unlink(answers)
        if os.path.exists(meta):
            os.unlink(meta)


def run(spec: RunSpec, model=None, *, questions: Optional[list] = None) -> dict:
    """The whole run: checks, resume, generation, question-order rewrite. `model` may be
    passed in (sweep loads it once); otherwise it is loaded after every input check.
    Nothing is written until every input (questions, images, reduction, model, output
    path) has been checked."""
    check_args(spec.benchmark, spec.batch_size, spec.max_new_tokens, spec.limit, spec.save_kept,
               spec.length_bucket)
    questions = load_questions(spec.benchmark, spec.questions) if questions is None else questions
    scope = questions if spec.limit is None else questions[:spec.limit]
    max_new_tokens = spec.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[spec.benchmark]
    check_output_path(spec.answers, "--answers")
    state = answer_file.resume_state(spec.answers, questions)
    settings = run_settings(spec, max_new_tokens)
    meta = spec.answers + ".run.json"
    if state.lines:    # a sidecar without answers mixes nothing: it is rewritten below
        answer_file.check_run_settings(meta, settings)
    pending = [i for i in range(len(scope)) if not state.answered[i]]
    already = len(scope) - len(pending)
    runnable = media.check_media(spec.benchmark, spec.images, [questions[i] for i in pending])
    if len(runnable) < len(pending):      # video questions whose video is missing
        keep = {id(q) for q in runnable}
        pending = [i for i in pending if id(questions[i]) in keep]
    stats = {"answered": 0, "tokens": 0, "seconds": 0.0, "tokens_per_s": 0.0}
    if pending:
        model = (load_model(spec.model_path, spec.dtype, spec.clip_text_tower)
                 if model is None else model)
        if run_media(spec.benchmark) not in model.media:     # only video can miss
            raise ScoreError(f"--benchmark {spec.benchmark} needs a Video-LLaVA checkpoint "
                             f"(config.json model_type 'video_llava'), a model that reads "
                             f"videos; {spec.model_path} is a {type(model).__name__}, which "
                             f"reads {' and '.join(model.media)}s")
        check_reduction(model, spec)
        os.makedirs(os.path.dirname(os.path.abspath(spec.answers)), exist_ok=True)
        answer_file.write_run_settings(meta, settings)
        try:
            stats = generate_answers(model, spec, questions, pending, max_new_tokens)
        except BaseException:
            _drop_if_unanswered(spec.answers, meta)
            raise
    total = answer_file.finalize(spec.answers, questions) if os.path.exists(spec.answers) else 0
    stats.update(total_lines=total, scope=len(scope), already_answered=already,
                 partial_line_dropped=state.dropped_partial)
    return stats


def spec_from_args(args, reduction=None, answers: Optional[str] = None,
                   kept_dir: Optional[str] = None) -> RunSpec:
    answers = answers or args.answers
    return RunSpec(
        benchmark=args.benchmark, questions=args.questions, images=args.images, answers=answers,
        reduction=reduction, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        save_kept=args.save_kept or 0,
        kept_dir=kept_dir or os.path.splitext(answers)[0] + "_kept", limit=args.limit,
        length_bucket=getattr(args, "length_bucket", None) or DEFAULT_LENGTH_BUCKET,
        model_path=args.model, dtype=getattr(args, "dtype", None) or "float32",
        clip_text_tower=getattr(args, "clip_text_tower", None))


def run_command(args) -> int:
    check_args(args.benchmark, args.batch_size, args.max_new_tokens, args.limit, args.save_kept,
               getattr(args, "length_bucket", None))
    spec = spec_from_args(args, reduction=parse_reduction(args.reduction))
    stats = run(spec)
    print(f"{spec.benchmark} [{spec.reduction_name}]: {stats['answered']} new answer(s), "
          f"{stats['total_lines']} line(s) in {spec.answers}; {stats['tokens']} tokens in "
          f"{stats['seconds']:.1f} s ({stats['tokens_per_s']:.1f} tok/s)")
    if spec.save_kept:
        print(f"kept-token pictures: {spec.kept_dir}")
    return 0

