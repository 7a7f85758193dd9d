"""Deterministic synthetic scenes: coloured shapes and letter glyphs on textured backgrounds.

A scene is a 96 x 96 RGB picture (24 x 24 patches of 4 px, the miniature
tower's input) with 2-4 shapes (some small: 2-3 patches across) and, in half
the scenes, two letters of different colours. Everything a question can ask
about is kept in :class:`Scene`, so answers are derived from the drawing.
The same ``(seed, split, index)`` always gives the same picture.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 96
COLORS = {"red": (215, 35, 35), "green": (30, 160, 50), "blue": (35, 70, 225),
          "yellow": (240, 200, 20), "purple": (150, 50, 190)}
SHAPES = ("circle", "square", "triangle", "diamond")
LETTERS = ("A", "E", "H", "K", "M", "R", "T", "X")
BIG, SMALL = (18, 26), (8, 11)        # side ranges in pixels
SMALL_SHARE = 0.3
GLYPH_SIZE = (17, 21)                 # font size range (cap height ~ 0.7 of it)
GLYPH_SHARE = 0.5                     # scenes with two letters
MARGIN = 3                            # free pixels kept between objects


@dataclasses.dataclass(frozen=True)
class Thing:
    """One drawn object. kind: a shape name or 'letter'; box = (x0, y0, x1, y1) pixels."""
    kind: str
    color: str
    box: Tuple[int, int, int, int]
    small: bool = False
    letter: Optional[str] = None
    font_size: int = 0                  # letters: the font size they were drawn with
    origin: Tuple[int, int] = (0, 0)    # letters: the text anchor passed to draw.text

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0


@dataclasses.dataclass(frozen=True)
class Scene:
    shapes: Tuple[Thing, ...]
    letters: Tuple[Thing, ...]
    texture: str

    @property
    def objects(self) -> Tuple[Thing, ...]:
        return self.letters + self.shapes

    def count(self, shape: str) -> int:
        return sum(t.kind == shape for t in self.shapes)

    def has(self, color: str, shape: str) -> bool:
        return any(t.kind == shape and t.color == color for t in self.shapes)


def rng_for(seed: int, split: str, index: int) -> random.Random:
    """An independent stream per (seed, split, index): splits never share a scene."""
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _background(rng: random.Random) -> Tuple[np.ndarray, str]:
    """A muted base colour with low-contrast texture: [H, W, 3] float, texture name."""
    base = np.array([rng.randint(150, 225) for _ in range(3)], np.float32)
    base = 0.6 * base + 0.4 * base.mean()          # desaturate: shapes keep the strong hues
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    texture = rng.choice(("stripes", "noise", "checker", "waves"))
    if texture == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 12)
        pattern = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif texture == "noise":
        g = np.random.default_rng(rng.getrandbits(32))
        coarse = g.standard_normal((IMAGE_SIZE // 3, IMAGE_SIZE // 3)).astype(np.float32)
        pattern = np.kron(coarse, np.ones((3, 3), np.float32)) * 0.7
    elif texture == "checker":
        cell = rng.choice((4, 6, 8))
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2.0 - 1.0
    else:
        fx, fy = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)
        pattern = np.sin(fx * xx + rng.uniform(0, 6)) * np.cos(fy * yy + rng.uniform(0, 6))
    amplitude = rng.uniform(5, 12)
    return base[None, None, :] + amplitude * pattern[..., None], texture


def _free(box, taken) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + MARGIN <= a or b + MARGIN <= x0 or y1 + MARGIN <= c or d + MARGIN <= y0
               for a, c, b, d in taken)


def _place(rng: random.Random, w: int, h: int, taken) -> Optional[Tuple[int, int, int, int]]:
    for _ in range(60):
        x0 = rng.randint(1, IMAGE_SIZE - w - 1)
        y0 = rng.randint(1, IMAGE_SIZE - h - 1)
        box = (x0, y0, x0 + w, y0 + h)
        if _free(box, taken):
            return box
    return None


def shape_pattern(shape: str, rgb) -> Image.Image:
    """A full-size fill for `shape`: each kind has its own 2-px pattern of the colour and a
    darker shade (circle solid, square vertical stripes, triangle horizontal stripes,
    diamond checks), so a 4-px patch inside an object shows what it belongs to, as a
    real object's texture does. The colour stays the patch's dominant hue."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    dark_where = {"circle": np.zeros_like(xx, bool), "square": xx % 2 == 1,
                  "triangle": yy % 2 == 1, "diamond": (xx + yy) % 2 == 1}[shape]
    base = np.asarray(rgb, np.float32)
    out = np.where(dark_where[..., None], 0.55 * base, base)
    return Image.fromarray(np.round(out).astype(np.uint8), "RGB")


def paint_shape(img: Image.Image, shape: str, box, rgb) -> None:
    """Draw `shape` with its pattern into `img` (the outline is `draw_shape`'s mask)."""
    mask = Image.new("L", img.size, 0)
    draw_shape(ImageDraw.Draw(mask), shape, box, 255)
    img.paste(shape_pattern(shape, rgb), (0, 0), mask)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, rgb) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


@functools.lru_cache(maxsize=None)
def _font(size: int):
    return ImageFont.load_default(size=size)


def draw_letter(draw: ImageDraw.ImageDraw, letter: str, origin, size: int, fill) -> None:
    draw.text(origin, letter, fill=fill, font=_font(size), stroke_width=1, stroke_fill=fill)


def label_map(scene: "Scene") -> np.ndarray:
    """[H, W] uint8: 0 = background, k = the k-th object of `scene.objects` (1-based):
    the pixels drawn at least half-opaque for it (letters are antialiased)."""
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for k, thing in enumerate(scene.objects, start=1):
        img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        draw = ImageDraw.Draw(img)
        if thing.kind == "letter":
            draw_letter(draw, thing.letter, thing.origin, thing.font_size, 255)
        else:
            draw_shape(draw, thing.kind, thing.box, 255)
        out[np.asarray(img) >= 128] = k
    return out


def make_scene(seed: int, split: str, index: int,
               glyph_share: float = GLYPH_SHARE) -> Tuple[Image.Image, Scene]:
    """The (picture, facts) of scene `index` of `split`; `glyph_share`: the chance of
    two letters (the data set's scenes use the default; the tower may ask for more)."""
    rng = rng_for(seed, split, index)
    pixels, texture = _background(rng)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    taken: List[Tuple[int, int, int, int]] = []
    letters: List[Thing] = []
    if rng.random() < glyph_share:
        planned = []
        for letter, color in zip(rng.sample(LETTERS, 2), rng.sample(list(COLORS), 2)):
            font = _font(rng.randint(*GLYPH_SIZE))
            l, t, r, b = font.getbbox(letter, stroke_width=1)
            box = _place(rng, r - l, b - t, taken + [p[3] for p in planned])
            if box is None:     # both letters or none: a question may ask for either
                planned = []
                break
            planned.append((letter, color, font, box, (l, t)))
        for letter, color, font, box, (l, t) in planned:
            origin = (box[0] - l, box[1] - t)
            draw_letter(draw, letter, origin, font.size, COLORS[color])
            taken.append(box)
            letters.append(Thing("letter", color, box, letter=letter, font_size=font.size,
                                 origin=origin))
    shapes: List[Thing] = []
    for _ in range(rng.randint(2, 4)):
        small = rng.random() < SMALL_SHARE
        side = rng.randint(*(SMALL if small else BIG))
        box = _place(rng, side, side, taken)
        if box is None:
            continue
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        paint_shape(img, shape, box, COLORS[color])
        taken.append(box)
        shapes.append(Thing(shape, color, box, small))
    return img, Scene(tuple(shapes), tuple(letters), texture)
