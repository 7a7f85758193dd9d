"""LLaVA-NeXT (AnyRes) host-side geometry: config, grid choice, unpadding, token layouts.

Pure Python / NumPy (no jax): everything here depends only on the original
image sizes, which the host knows before a step, so the results are static
gather maps and counts for the jitted model (`duet_jax.models.llava_next`).

Conventions (transformers' `LlavaNextModel`): an image of original size
(H, W) is resized to the best grid pinpoint (bh, bw) and cut into
`gh x gw = (bh // S) x (bw // S)` tiles of S = vision image_size pixels,
preceded by one base crop of the whole image: `1 + G` crops, `G = gh * gw`.
Each crop gives `N = h * w` patch features (h = w = S // patch_size).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import numpy as np

from duet_jax.models.config import LlavaConfig
from duet_jax.ops import select_best_resolution

DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


@dataclasses.dataclass(frozen=True)
class LlavaNextConfig(LlavaConfig):
    """HF `LlavaNextConfig`: LLaVA's fields plus the AnyRes grid pinpoints [(h, w), ...]."""
    image_grid_pinpoints: tuple = DEFAULT_PINPOINTS
    # the feature strategy the family's packing needs (a class attribute, not a field):
    # NeXT drops CLS ("default"); a CLS-free tower's family (OneVision) keeps every row ("full")
    select_strategy = "default"

    def __post_init__(self):
        super().__post_init__()
        pins = tuple(tuple(int(v) for v in p) for p in self.image_grid_pinpoints)
        object.__setattr__(self, "image_grid_pinpoints", pins)
        size = self.vision.image_size
        bad = [p for p in pins if len(p) != 2 or p[0] % size or p[1] % size or min(p) <= 0]
        if bad:
            raise ValueError(f"image_grid_pinpoints {bad[:2]} are not positive multiples of the "
                             f"vision image_size {size}; fix config.json")
        if self.vision_feature_select_strategy != self.select_strategy:
            # HF's pack_image_features cannot reshape CLS-carrying tiles into a grid either.
            raise ValueError(f"{type(self).__name__} needs vision_feature_select_strategy="
                             f"'{self.select_strategy}' (config.json has "
                             f"{self.vision_feature_select_strategy!r})")

    @property
    def patches_per_side(self) -> int:
        return self.vision.image_size // self.vision.patch_size

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "LlavaNextConfig":
        d = dict(d)
        if d.get("image_grid_pinpoints") is None:
            d.pop("image_grid_pinpoints", None)
        return super().from_hf.__func__(cls, d)

    def to_hf(self) -> dict:
        out = super().to_hf()
        out.update(model_type="llava_next", architectures=["LlavaNextForConditionalGeneration"],
                   image_grid_pinpoints=[list(p) for p in self.image_grid_pinpoints])
        return out


def grid_shape(cfg: LlavaNextConfig, size_hw) -> Tuple[int, int]:
    """(gh, gw) tiles of one image of original size (H, W)."""
    if min(int(v) for v in size_hw) <= 0:
        raise ValueError(f"image size {tuple(size_hw)} must be positive (height, width)")
    bh, bw = select_best_resolution(size_hw, cfg.image_grid_pinpoints)
    s = cfg.vision.image_size
    return bh // s, bw // s


def num_crops(cfg: LlavaNextConfig, size_hw) -> int:
    gh, gw = grid_shape(cfg, size_hw)
    return 1 + gh * gw


def unpad_bounds(cfg: LlavaNextConfig, size_hw) -> Tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the canvas patch rows/cols HF's `unpad_image` keeps."""
    gh, gw = grid_shape(cfg, size_hw)
    n = cfg.patches_per_side
    ch, cw = gh * n, gw * n
    oh, ow = (int(v) for v in size_hw)
    if ow / oh > cw / ch:
        new_h = int(round(oh * (cw / ow), 7))
        pad = (ch - new_h) // 2
        return pad, ch - pad, 0, cw
    new_w = int(round(ow * (ch / oh), 7))
    pad = (cw - new_w) // 2
    return 0, ch, pad, cw - pad


def pack_index(cfg: LlavaNextConfig, size_hw) -> np.ndarray:
    """HF `pack_image_features` order for one image as indices into its crops' features.

    Index `c * N + p` = patch p of crop c (crop 0 = base); -1 = the image_newline
    row. Order: the base crop's N rows, then the unpadded canvas in raster
    order with one newline after each canvas row. Length = the image's token count.
    """
    gh, gw = grid_shape(cfg, size_hw)
    n = cfg.patches_per_side
    r0, r1, c0, c1 = unpad_bounds(cfg, size_hw)
    rows, cols = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
    crop = 1 + (rows // n) * gw + cols // n
    idx = crop * (n * n) + (rows % n) * n + cols % n
    idx = np.concatenate([idx, np.full((r1 - r0, 1), -1)], axis=1).reshape(-1)
    return np.concatenate([np.arange(n * n), idx]).astype(np.int32)


def num_image_tokens(cfg: LlavaNextConfig, size_hw) -> int:
    """Image-token ids HF's LlavaNextProcessor emits for one image (unreduced)."""
    r0, r1, c0, c1 = unpad_bounds(cfg, size_hw)
    return cfg.patches_per_side ** 2 + (r1 - r0) * (c1 - c0 + 1)


def reduced_block_size(cfg: LlavaNextConfig, size_hw, k: int) -> int:
    """Tokens of one image after Stage 1 (docs/ALGORITHM.md §2.6): (1 + G) * K."""
    return num_crops(cfg, size_hw) * k


def tile_canvas_index(cfg: LlavaNextConfig, size_hw, max_tiles: int) -> np.ndarray:
    """[max_tiles, N] global raster index on the (gh*h) x (gw*w) canvas of each tile's
    patches (tile-major, patches row-major); tiles beyond G get -1."""
    gh, gw = grid_shape(cfg, size_hw)
    n = cfg.patches_per_side
    out = np.full((max_tiles, n * n), -1, np.int64)
    p = np.arange(n * n)
    for t in range(gh * gw):
        ty, tx = divmod(t, gw)
        out[t] = (ty * n + p // n) * (gw * n) + tx * n + p % n
    return out
