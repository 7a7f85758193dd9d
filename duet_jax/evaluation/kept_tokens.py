"""Kept-token pictures (`eval.py run --save-kept N`): what the reduced model still sees.

One PNG per sample: the title, the question and the model's answer on top, then
the model's own input image (padded, resized, de-normalised `pixel_values`) as it
is, then one panel per stage drawn on it:

* Stage 1 panel: dominant patches as they are, outlined in yellow; patches merged
  into a contextual token keep their colours, outlined in that token's colour (its
  anchor carries a square marker in the same colour); dropped patches greyed.
* One panel per Stage-2 boundary: the same picture restricted to the image
  tokens that survived it. A dominant row is its own patch; a contextual row is
  its anchor patch plus its members.

Image-block rows map to patches through the Stage-1 `MergeResult` (`positions`:
0 = CLS, p + 1 = patch p; rows [0, dominant) are the dominant rows, the rest the
contextual ones). Without Stage 1 a row is a patch (or CLS for the "full"
feature strategy). Stage-2 `kept` indices are relative to the previous segment's
image block, so they are composed boundary by boundary.

Everything is NumPy + matplotlib (Agg, no pyplot); no JAX import.
"""
from __future__ import annotations

import colorsys
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

DROPPED, DOMINANT, ANCHOR, MEMBER = 0, 1, 2, 3
OUTLINE = (255, 221, 0)          # dominant / kept patch outline
MARKER_RING = (0, 0, 0)
PANEL_MIN_PIXELS = 600           # panels are upscaled (nearest) to at least this size
PAD, GAP, BOTTOM, DPI = 12, 24, 64, 100
# The header: title, question and answer lines (wrapped to the picture's width; a text
# longer than its lines ends in "..."), then the two-line panel titles.
TITLE_LINES, QUESTION_LINES, ANSWER_LINES = 2, 3, 2
LINE_PX, PANEL_TITLE_PX = 16, 34
TOP = 8 + LINE_PX * (TITLE_LINES + QUESTION_LINES + ANSWER_LINES) + 8 + PANEL_TITLE_PX
CHAR_PX = 7.2                    # a generous average glyph width at 9-10 pt, 100 dpi


def group_color(j: int) -> tuple:
    """Colour of contextual token j (golden-ratio hues: neighbours differ; none near the
    yellow of the dominant outline)."""
    hue = (j * 0.618033988749895) % 1.0
    if abs(hue - 0.145) < 0.06:
        hue = (hue + 0.5) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def grey_out(rgb: np.ndarray) -> np.ndarray:
    """Dropped patches: luminance, compressed into a dull mid-grey band; R = G = B."""
    lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    g = np.round(90.0 + 0.35 * lum).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def input_image(pixel_values: np.ndarray, mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
    """pixel_values [3, H, W] (normalised) -> the model's input image uint8 [H, W, 3]."""
    x = np.asarray(pixel_values, np.float32) * np.asarray(std, np.float32)[:, None, None]
    x = (x + np.asarray(mean, np.float32)[:, None, None]) * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8).transpose(1, 2, 0)


@dataclasses.dataclass(frozen=True)
class BlockMap:
    """What each image-block row (Stage-1 output order) stands for.

    dominant_patch: [K] patch of a dominant row, -1 for CLS or a contextual row.
    group:          [K] contextual index j of a contextual row, else -1.
    anchor_patch:   [C] anchor (or centroid) patch of contextual token j.
    members:        list of C int arrays: member patches of token j.
    """
    dominant_patch: np.ndarray
    group: np.ndarray
    anchor_patch: np.ndarray
    members: list
    num_patches: int

    @property
    def num_rows(self) -> int:
        return len(self.group)


def block_map(num_patches: int, *, positions: Optional[np.ndarray] = None,
              member_positions: Optional[np.ndarray] = None,
              member_anchor: Optional[np.ndarray] = None, num_dominant: int = 0,
              with_cls: bool = False) -> BlockMap:
    """Rows -> patches for one sample. With Stage 1 pass its `MergeResult` fields
    ([K], [Q], [Q]) and `num_dominant` (the preset's dominant count); without,
    rows are the patches (`with_cls`: row 0 is CLS, the "full" strategy)."""
    if positions is None:
        patches = np.arange(num_patches) if not with_cls else np.arange(-1, num_patches)
        k = len(patches)
        return BlockMap(patches.astype(np.int64), np.full(k, -1), np.zeros(0, np.int64), [],
                        num_patches)
    positions = np.asarray(positions, np.int64)
    k = len(positions)
    dominant = np.full(k, -1, np.int64)
    dominant[:num_dominant] = positions[:num_dominant] - 1        # CLS (position 0) -> -1
    group = np.full(k, -1, np.int64)
    group[num_dominant:] = np.arange(k - num_dominant)
    anchors = positions[num_dominant:] - 1
    member_positions = np.asarray(member_positions, np.int64) - 1
    member_anchor = np.asarray(member_anchor, np.int64)
    members = [member_positions[member_anchor == j] for j in range(k - num_dominant)]
    return BlockMap(dominant, group, anchors, members, num_patches)


def patch_roles(block: BlockMap, rows: Optional[np.ndarray] = None) -> tuple:
    """Roles [N] (DROPPED/DOMINANT/ANCHOR/MEMBER) and contextual group [N] (-1 if none)
    of the patches behind the surviving `rows` (default: every row). A patch claimed
    twice keeps the strongest role (dominant > anchor > member, first group wins)."""
    rows = np.arange(block.num_rows) if rows is None else np.asarray(rows, np.int64)
    role = np.full(block.num_patches, DROPPED, np.int64)
    group = np.full(block.num_patches, -1, np.int64)
    for r in rows:
        j = block.group[r]
        if j < 0:
            p = block.dominant_patch[r]
            if p >= 0:
                role[p], group[p] = DOMINANT, -1
            continue
        a = block.anchor_patch[j]
        if role[a] in (DROPPED, MEMBER):
            role[a], group[a] = ANCHOR, j
        for p in block.members[j]:
            if role[p] == DROPPED:
                role[p], group[p] = MEMBER, j
    return role, group


def cls_kept(block: BlockMap, rows: Optional[np.ndarray] = None) -> bool:
    rows = np.arange(block.num_rows) if rows is None else np.asarray(rows, np.int64)
    return bool(np.any((block.group[rows] < 0) & (block.dominant_patch[rows] < 0)))


def surviving_rows(kept: Sequence[np.ndarray], num_rows: int) -> list:
    """Original block rows alive after each boundary: kept_s indexes the rows alive
    after boundary s - 1, so rows_s = rows_{s-1}[kept_s]."""
    rows, out = np.arange(num_rows), []
    for k in kept:
        rows = rows[np.asarray(k, np.int64)]
        out.append(rows)
    return out


def panel_scale(image_size: int) -> int:
    return max(1, math.ceil(PANEL_MIN_PIXELS / image_size))


def render_panel(image: np.ndarray, role: np.ndarray, group: np.ndarray, patch_size: int,
                 scale: int) -> np.ndarray:
    """image uint8 [H, W, 3] -> the panel uint8 [H*scale, W*scale, 3]."""
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    h, w = big.shape[:2]
    cell = patch_size * scale
    grid = image.shape[1] // patch_size
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    inside = (ys < grid * cell) & (xs < grid * cell)
    patch = np.where(inside, (np.minimum(ys // cell, grid - 1) * grid
                              + np.minimum(xs // cell, grid - 1)), 0)
    px_role = np.where(inside, role[patch], DROPPED)
    px_group = np.where(inside, group[patch], -1)
    out = np.where((px_role == DROPPED)[..., None], grey_out(big), big)
    fy, fx = ys % cell, xs % cell
    border = max(1, cell // 24)
    edge = (fy < border) | (fy >= cell - border) | (fx < border) | (fx >= cell - border)
    wide = max(2, cell // 12)        # merged patches: a wider outline in the token's colour
    wide_edge = (fy < wide) | (fy >= cell - wide) | (fx < wide) | (fx >= cell - wide)
    merged = (px_role == ANCHOR) | (px_role == MEMBER)
    for j in np.unique(px_group[merged & (px_group >= 0)]):
        out[merged & wide_edge & (px_group == j)] = group_color(int(j))
    out[(px_role == DOMINANT) & edge] = OUTLINE
    half, c = max(1, cell // 7), cell // 2
    ring = (np.abs(fy - c) <= half + max(1, border)) & (np.abs(fx - c) <= half + max(1, border))
    core = (np.abs(fy - c) <= half) & (np.abs(fx - c) <= half)
    is_anchor = px_role == ANCHOR
    out[is_anchor & ring & ~core] = MARKER_RING
    for j in np.unique(px_group[is_anchor]):
        out[is_anchor & core & (px_group == j)] = group_color(int(j))
    return out


@dataclasses.dataclass(frozen=True)
class Layout:
    """Pixel geometry of a kept-token PNG (top-left origin, as the file is read):
    the input image, then `num_panels` token panels (stage 1 or the input's tokens
    first, then one per Stage-2 boundary)."""
    width: int
    height: int
    panel_size: int
    cell: int
    num_panels: int

    def panel_origin(self, i: int) -> tuple:
        """(x, y) of token panel i's top-left pixel (i = -1: the input image)."""
        return (PAD + (i + 1) * (self.panel_size + GAP), TOP)

    def patch_center(self, i: int, patch: int, grid: int) -> tuple:
        """(row, col) pixel at the centre of patch `patch` in panel i."""
        x0, y0 = self.panel_origin(i)
        r, c = divmod(patch, grid)
        return (y0 + r * self.cell + self.cell // 2, x0 + c * self.cell + self.cell // 2)


def layout_for(image_size: int, patch_size: int, num_panels: int) -> Layout:
    scale = panel_scale(image_size)
    size = image_size * scale
    width = 2 * PAD + (num_panels + 1) * size + num_panels * GAP
    return Layout(width, TOP + size + BOTTOM, size, patch_size * scale, num_panels)


def _legend_handles(with_stage1: bool):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    kept = "dominant (kept as is)" if with_stage1 else "kept patch"
    handles = [Patch(facecolor="none", edgecolor=np.array(OUTLINE) / 255, linewidth=2, label=kept)]
    if with_stage1:
        handles += [Patch(facecolor="none", edgecolor=np.array(group_color(0)) / 255,
                          linewidth=2, label="merged into a contextual token (one colour per "
                                             "token)"),
                    Line2D([], [], marker="s", linestyle="none", markersize=9,
                           markerfacecolor=np.array(group_color(0)) / 255,
                           markeredgecolor="black", label="anchor of that token")]
    handles.append(Patch(facecolor=(0.55, 0.55, 0.55), label="dropped (not seen)"))
    return handles


def wrap_lines(text: str, width_px: float, max_lines: int, measure=None) -> list:
    """`text` wrapped to `width_px` (newlines kept, words split only when one alone is too
    wide), at most `max_lines` lines; a longer text ends in "..." on the last line.
    measure(str) -> its width in pixels (default: CHAR_PX per character)."""
    measure = measure or (lambda t: len(t) * CHAR_PX)
    fits = lambda t: measure(t) <= width_px   # noqa: E731

    def split_word(word):                     # longest prefixes that fit, one by one
        parts = []
        while word:
            n = max(1, max((k for k in range(1, len(word) + 1) if fits(word[:k])), default=1))
            parts.append(word[:n])
            word = word[n:]
        return parts

    lines = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split():
            for piece in ([word] if fits(word) else split_word(word)):
                candidate = f"{line} {piece}" if line else piece
                if fits(candidate):
                    line = candidate
                else:
                    lines.append(line)
                    line = piece
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


def save_kept_picture(path: str, image: np.ndarray, patch_size: int, block: BlockMap, *,
                      kept: Sequence[np.ndarray] = (), boundaries: Sequence[int] = (),
                      with_stage1: bool, title: str, question: str = "",
                      answer: Optional[str] = None) -> Layout:
    """Write the PNG; returns its Layout. image uint8 [S, S, 3]; kept: per boundary
    [n_s] indices (relative to the previous block); boundaries: LM layer per entry;
    question / answer: the prompt's text and the model's answer, shown under the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = image.shape[1] // patch_size
    n = grid * grid
    panels, titles = [], []
    role, group = patch_roles(block)
    num_groups = len(block.anchor_patch)
    n_dom = int(np.sum((block.group < 0) & (block.dominant_patch >= 0)))
    cls = " + CLS" if cls_kept(block) else ""
    if with_stage1:
        merged = int(np.sum(role == MEMBER) + np.sum(role == ANCHOR))
        titles.append(f"stage 1: {n_dom} dominant{cls} + {num_groups} contextual tokens\n"
                      f"({merged} patches merged, {int(np.sum(role == DROPPED))} of {n} dropped)")
    else:
        titles.append(f"input: {block.num_rows} image tokens ({n} patches{cls})")
    scale = panel_scale(image.shape[0])
    panels.append(render_panel(image, role, group, patch_size, scale))
    for layer, rows in zip(boundaries, surviving_rows(kept, block.num_rows)):
        r_role, r_group = patch_roles(block, rows)
        seen = int(np.sum(r_role != DROPPED))
        cls = " + CLS" if cls_kept(block, rows) else ""
        titles.append(f"after LM layer {layer}: {len(rows)} of {block.num_rows} tokens kept\n"
                      f"({seen} of {n} patches still seen{cls})")
        panels.append(render_panel(image, r_role, r_group, patch_size, scale))
    layout = layout_for(image.shape[0], patch_size, len(panels))
    fig = Figure(figsize=(layout.width / DPI, layout.height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    for i, (panel, text) in enumerate([(big, "the model's input image\n(padded and resized)"),
                                       *zip(panels, titles)], start=-1):
        x0, _ = layout.panel_origin(i)
        # figimage places raw pixels (no resampling); yo counts from the bottom.
        fig.figimage(panel, xo=x0, yo=BOTTOM, origin="upper")
        fig.text((x0 + layout.panel_size / 2) / layout.width,
                 (BOTTOM + layout.panel_size + 6) / layout.height, text, ha="center",
                 va="bottom", fontsize=9)
    renderer = fig.canvas.get_renderer()

    def measure(size, weight):
        def width(text):
            t = fig.text(0, 0, text, fontsize=size, weight=weight)
            w = t.get_window_extent(renderer).width
            t.remove()
            return w
        return width

    text_px = layout.width - 2 * PAD
    parts = [(title, TITLE_LINES, 10, "bold"), (f"Q: {question}" if question else None,
                                                QUESTION_LINES, 9, "normal"),
             (None if answer is None else f"A: {answer}", ANSWER_LINES, 9, "normal")]
    header = [(line, size, weight) for text, most, size, weight in parts if text is not None
              for line in wrap_lines(text, text_px, most, measure(size, weight))]
    for k, (line, size, weight) in enumerate(header):
        fig.text(PAD / layout.width, 1 - (8 + k * LINE_PX) / layout.height, line, ha="left",
                 va="top", fontsize=size, weight=weight)
    handles = _legend_handles(with_stage1)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 2 / layout.height))
    fig.savefig(path, dpi=DPI)
    return layout
