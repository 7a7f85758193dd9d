"""Video frames: Video-LLaVA's frame choice and the frame-folder reader (no JAX)."""
from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

VIDEO_FRAMES = 8                      # frames per video (Video-LLaVA)
FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def frame_indices(num_frames: int, wanted: int = VIDEO_FRAMES) -> np.ndarray:
    """Video-LLaVA's frame choice: `linspace(0, n - 1, wanted)` truncated to ints."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    return np.linspace(0, num_frames - 1, wanted, dtype=int)


def _frame_sort_key(name: str):
    stem = os.path.splitext(name)[0]
    numbers = re.findall(r"\d+", stem)
    return (int(numbers[-1]) if numbers else -1, name)


def frame_files(folder: str) -> list[str]:
    """The image files of a frame folder, in frame order (the last number in each name)."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTS)]
    return [os.path.join(folder, n) for n in sorted(names, key=_frame_sort_key)]


def load_frames(video, num_frames: int) -> list:
    """A video as `num_frames` RGB frames spread like Video-LLaVA's loader (linspace).

    video: a list of frames (PIL images or [H, W, 3] uint8 arrays), a [T, H, W, 3]
    uint8 array, a `.npy` file of one, or a folder of frame image files. Video
    files need a decoder that is not installed here: pre-extract the frames.
    """
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if os.path.isdir(path):
            files = frame_files(path)
            if not files:
                raise ValueError(f"{path}: frame folder holds no image files")
            frames = [files[i] for i in frame_indices(len(files), num_frames)]
            out = []
            for f in frames:
                with Image.open(f) as img:
                    out.append(img.convert("RGB"))
            return out
        if path.endswith(".npy") and os.path.isfile(path):
            video = np.load(path)
        else:
            raise ValueError(f"{path}: pass a folder of frame images or a .npy [T, H, W, 3] uint8 "
                             "array; video files need PyAV/decord, which are not installed here")
    frames = list(video)
    if not frames:
        raise ValueError("a video needs at least one frame")
    return [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, np.uint8))
            for f in (frames[i] for i in frame_indices(len(frames), num_frames))]
