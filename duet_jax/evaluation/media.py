"""Images and video frames of benchmark questions: existence checks and loading.

Images follow `questions.resolve_image_path` (SEED video questions map to frame 4
of the 8 extracted frames). Video questions take `VIDEO_FRAMES` frames spread as
Video-LLaVA's decord loader spreads them (`np.linspace(0, n - 1, 8, dtype=int)`),
from either

* a pre-extracted frame folder `<videos>/<video_name>/` of image files (sorted by
  name, numerically where the names are numbers), or
* a video file `<videos>/<video_name>{.mp4,.avi,.mov,.mkv}`, decoded with PyAV
  (`pip install av`) or decord (`pip install decord`), whichever is installed.

Pure Python + PIL + NumPy: no JAX import.
"""
from __future__ import annotations

import importlib.util
import os

from PIL import Image

from duet_jax.data.frames import FRAME_EXTS, VIDEO_FRAMES, frame_files, frame_indices

from .questions import Question, resolve_image_path, resolve_video_path
from .io import ScoreError



def frame_folder(videos_dir: str, question: Question) -> str | None:
    folder = os.path.join(videos_dir, question.image)
    return folder if os.path.isdir(folder) else None


def video_decoder() -> str | None:
    """'av' or 'decord' when one is importable, else None."""
    for name in ("av", "decord"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def check_media(benchmark: str, images_dir: str, questions: list[Question]) -> list[Question]:
    """Raise naming the first missing image; for video, drop questions whose video is
    missing (the official loop skips them) and check frames can be read.

    Returns the questions that will run.
    """
    if not os.path.isdir(images_dir):
        raise ScoreError(f"{images_dir}: not a folder; --images must name the image (or video) "
                         "folder")
    if benchmark != "video":
        for q in questions:
            if q.image is None:
                continue
            path = resolve_image_path(images_dir, q)
            if not os.path.isfile(path):
                raise ScoreError(f"image file not found: {path} (question_id {q.question_id!r}); "
                                 "check --images and the question file's 'image' paths")
            _check_image_header(path, q)
        return questions
    kept, missing, need_decoder = [], [], None
    for q in questions:
        folder = frame_folder(images_dir, q)
        if folder is not None:
            if not frame_files(folder):
                raise ScoreError(f"{folder}: frame folder holds no image files "
                                 f"({', '.join(FRAME_EXTS)})")
            kept.append(q)
        elif resolve_video_path(images_dir, q) is not None:
            need_decoder = need_decoder or resolve_video_path(images_dir, q)
            kept.append(q)
        else:
            missing.append(q.image)
    if need_decoder is not None and video_decoder() is None:
        raise ScoreError(f"decoding {need_decoder} needs a video decoder: pip install av (or "
                         f"pip install decord), or pre-extract the frames into "
                         f"{images_dir}/<video_name>/ as image files")
    if missing:
        print(f"warning: {len(missing)} video(s) not found under {images_dir} (e.g. "
              f"{missing[0]!r}); skipped, as the official inference script does")
    return kept


def _check_image_header(path: str, question: Question) -> None:
    """An empty or non-image file fails here, before the model loads (reads the header only)."""
    try:
        with Image.open(path):
            pass
    except OSError as e:     # PIL.UnidentifiedImageError is an OSError
        raise ScoreError(f"{path}: cannot read the image (question_id {question.question_id!r}: "
                         f"{' '.join(str(e).split())}); replace the file") from None


def _decode_frames(path: str, wanted: int) -> list[Image.Image]:
    if video_decoder() == "av":
        import av
        with av.open(path) as container:
            frames = [f.to_image().convert("RGB") for f in container.decode(video=0)]
        if not frames:
            raise ScoreError(f"{path}: no video frames could be decoded")
        return [frames[i] for i in frame_indices(len(frames), wanted)]
    import decord
    reader = decord.VideoReader(path, num_threads=1)
    if len(reader) == 0:
        raise ScoreError(f"{path}: no video frames could be decoded")
    batch = reader.get_batch(list(frame_indices(len(reader), wanted))).asnumpy()
    return [Image.fromarray(frame).convert("RGB") for frame in batch]


def load_video_frames(videos_dir: str, question: Question,
                      wanted: int = VIDEO_FRAMES) -> list[Image.Image]:
    """`wanted` RGB frames of a video question (frame folder first, then the video file)."""
    folder = frame_folder(videos_dir, question)
    if folder is not None:
        files = frame_files(folder)
        if not files:
            raise ScoreError(f"{folder}: frame folder holds no image files")
        out = []
        for i in frame_indices(len(files), wanted):
            with Image.open(files[i]) as img:
                out.append(img.convert("RGB"))
        return out
    path = resolve_video_path(videos_dir, question)
    if path is None:
        raise ScoreError(f"video {question.image!r} not found under {videos_dir}")
    if video_decoder() is None:
        target = os.path.join(videos_dir, question.image)
        raise ScoreError(f"decoding {path} needs a video decoder: pip install av (or pip install "
                         f"decord), or pre-extract its frames into {target}/")
    return _decode_frames(path, wanted)


def load_question_image(images_dir: str, question: Question):
    """The question's RGB PIL image, or None for a text-only question."""
    if question.image is None:
        return None
    path = resolve_image_path(images_dir, question)
    if not os.path.isfile(path):
        raise ScoreError(f"image file not found: {path} (question_id {question.question_id!r})")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as e:
        raise ScoreError(f"{path}: cannot read the image ({e}); replace the file") from None
