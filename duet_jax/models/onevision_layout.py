"""LLaVA-OneVision host-side geometry: config, AnyRes-max-N packing, video pooling.

Pure Python / NumPy (no jax), like `duet_jax.models.anyres`, whose grid choice
and unpadding OneVision shares. What OneVision adds (HF
`LlavaOnevisionModel.pack_image_features` / `apply_pooling`):

* `anyres_max_N`: after unpadding, a canvas of h x w patch rows/cols larger
  than N base crops (ratio = sqrt(h w / (N n^2)) > 1.1) is bilinearly resized
  (torch `interpolate(mode="bilinear", align_corners=False)`) to
  (int(h // ratio), int(w // ratio)); then one `image_newline` row per canvas row.
* video: every frame's n x n patch grid is bilinearly resized to
  ceil(n/2) x ceil(n/2); frames are concatenated; one `image_newline` at the end.

Both are fixed linear maps of the projected features, so each is written as
**taps**: for every output row, 4 (index, weight) pairs into the crops' rows
(index `c * N + p`; -1 = the newline row). The jitted model applies them as
one gather and a weighted sum; a plain copy is one tap of weight 1.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Tuple

import numpy as np

from duet_jax.models import anyres
from duet_jax.models.anyres import LlavaNextConfig

ASPECT = re.compile(r"anyres_max_(\d+)")


@dataclasses.dataclass(frozen=True)
class OnevisionConfig(LlavaNextConfig):
    """HF `LlavaOnevisionConfig`: NeXT's fields plus the video token and `anyres_max_N`."""
    video_token_index: int = 151647
    vision_aspect_ratio: str = "anyres_max_9"
    vision_feature_layer: int = -1
    vision_feature_select_strategy: str = "full"
    select_strategy = "full"     # SigLIP has no CLS row: every row is a patch
    # frames the duet_jax handle samples per video (not an HF config key: the HF
    # processor takes whatever frames it is given; LLaVA-OneVision evaluates with 8-32)
    num_frames = 8

    def __post_init__(self):
        super().__post_init__()
        if not ASPECT.fullmatch(str(self.vision_aspect_ratio)):
            raise ValueError(f"vision_aspect_ratio={self.vision_aspect_ratio!r} is not supported; "
                             "use 'anyres_max_<N>' (LLaVA-OneVision's is 'anyres_max_9')")
        self.feature_layer_index      # checks vision_feature_layer against the tower depth

    @property
    def max_crops(self) -> int:
        return int(ASPECT.fullmatch(self.vision_aspect_ratio).group(1))

    @property
    def pooled_side(self) -> int:
        return math.ceil(self.patches_per_side / 2)

    def to_hf(self) -> dict:
        out = super().to_hf()
        out.pop("image_seq_length", None)
        out.update(model_type="llava_onevision",
                   architectures=["LlavaOnevisionForConditionalGeneration"])
        out["vision_config"].update(model_type="siglip_vision_model", vision_use_head=False)
        out["text_config"]["model_type"] = "qwen2"
        return out

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "OnevisionConfig":
        d = dict(d)
        if isinstance(d.get("vision_feature_layer"), (list, tuple)):
            raise ValueError("vision_feature_layer is a list; only one int layer is supported")
        return super().from_hf.__func__(cls, d)


def _bilinear_1d(size_in: int, size_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """(lo, hi index [O], hi weight [O]) of torch's bilinear, align_corners=False."""
    o = np.arange(size_out, dtype=np.float32)
    src = np.maximum((o + np.float32(0.5)) * np.float32(size_in / size_out) - np.float32(0.5), 0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def bilinear_taps(rows: np.ndarray, size_out: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """rows [h, w] int (feature index of each grid cell) -> (index, weight) [oh * ow, 4]."""
    (h, w), (oh, ow) = rows.shape, size_out
    y0, y1, wy = _bilinear_1d(h, oh)
    x0, x1, wx = _bilinear_1d(w, ow)
    yy = lambda a: a[:, None]
    idx = np.stack([rows[yy(y0), x0], rows[yy(y0), x1], rows[yy(y1), x0], rows[yy(y1), x1]], -1)
    wgt = np.stack([yy(1 - wy) * (1 - wx), yy(1 - wy) * wx, yy(wy) * (1 - wx), yy(wy) * wx], -1)
    return idx.reshape(-1, 4), wgt.reshape(-1, 4).astype(np.float32)


def _copy_taps(index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    idx = np.zeros((len(index), 4), np.int64)
    idx[:, 0] = index
    wgt = np.zeros((len(index), 4), np.float32)
    wgt[:, 0] = 1.0
    return idx, wgt


def canvas_size(cfg: OnevisionConfig, size_hw) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """((h, w) unpadded canvas, (oh, ow) after the anyres_max_N resize) in patches."""
    r0, r1, c0, c1 = anyres.unpad_bounds(cfg, size_hw)
    h, w = r1 - r0, c1 - c0
    ratio = math.sqrt(h * w / (cfg.max_crops * cfg.patches_per_side ** 2))
    return (h, w), ((int(h // ratio), int(w // ratio)) if ratio > 1.1 else (h, w))


def image_taps(cfg: OnevisionConfig, size_hw) -> Tuple[np.ndarray, np.ndarray]:
    """HF pack order of one image as taps [F, 4] into its crops' rows (base crop first)."""
    gh, gw = anyres.grid_shape(cfg, size_hw)
    n = cfg.patches_per_side
    r0, r1, c0, c1 = anyres.unpad_bounds(cfg, size_hw)
    rows, cols = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
    grid = (1 + (rows // n) * gw + cols // n) * (n * n) + (rows % n) * n + cols % n
    _, (oh, ow) = canvas_size(cfg, size_hw)
    idx, wgt = bilinear_taps(grid, (oh, ow)) if (oh, ow) != grid.shape else _copy_taps(grid.reshape(-1))
    nl_idx, nl_wgt = _copy_taps(np.full(oh, -1))
    idx = np.concatenate([idx.reshape(oh, ow, 4), nl_idx[:, None]], 1).reshape(-1, 4)
    wgt = np.concatenate([wgt.reshape(oh, ow, 4), nl_wgt[:, None]], 1).reshape(-1, 4)
    base_idx, base_wgt = _copy_taps(np.arange(n * n))
    return np.concatenate([base_idx, idx]), np.concatenate([base_wgt, wgt])


def num_image_tokens(cfg: OnevisionConfig, size_hw) -> int:
    """Image-token ids LlavaOnevisionProcessor emits for one image (unreduced)."""
    _, (oh, ow) = canvas_size(cfg, size_hw)
    return cfg.patches_per_side ** 2 + oh * (ow + 1)


def video_taps(cfg: OnevisionConfig, frames: int) -> Tuple[np.ndarray, np.ndarray]:
    """HF video order as taps [frames * m^2 + 1, 4] into the frames' rows (m = ceil(n/2))."""
    n, m = cfg.patches_per_side, cfg.pooled_side
    idx, wgt = bilinear_taps(np.arange(n * n).reshape(n, n), (m, m))
    idx = np.concatenate([idx + f * n * n for f in range(frames)])
    wgt = np.concatenate([wgt] * frames)
    nl_idx, nl_wgt = _copy_taps(np.array([-1]))
    return np.concatenate([idx, nl_idx]), np.concatenate([wgt, nl_wgt])


def num_video_tokens(cfg: OnevisionConfig, frames: int) -> int:
    return frames * cfg.pooled_side ** 2 + 1
