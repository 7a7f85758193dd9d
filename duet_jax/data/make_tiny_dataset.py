"""Generate the tiny bundled LLaVA-JSON data set (deterministic).

    python -m duet_jax.data.make_tiny_dataset [--out duet_jax/data/assets]

Writes `images/shape_XX.png` (16 small drawings of one coloured shape on a
background, non-square sizes to exercise pad-to-square), `demo.png` (a scene
with three shapes) and `tiny_llava.json`: 16 image records (one per image, some
multi-turn, `<image>` first or last in the first human turn, as in mix665k)
and 8 text-only records. Answers are derived from the drawing, so a model can
actually learn them. Re-running reproduces the files byte for byte.
"""
from __future__ import annotations

import argparse
import json
import os
import random

from PIL import Image, ImageDraw

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220),
          "yellow": (235, 205, 30)}
BACKGROUNDS = ((255, 255, 255), (200, 200, 200), (30, 30, 30))
SHAPES = ("circle", "square", "triangle")
SIZES = ((64, 48), (48, 64), (56, 56), (72, 40))
SIDES = ("left", "center", "right")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def shape_box(width: int, height: int, side: str, size: int):
    cx = {"left": width // 4, "center": width // 2, "right": 3 * width // 4}[side]
    cy = height // 2
    return (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)


def make_image(index: int):
    """Deterministic (image, facts) for image `index` in [0, 16)."""
    color = list(COLORS)[index % 4]
    shape = SHAPES[index % 3]
    side = SIDES[(index // 3) % 3]
    width, height = SIZES[index % 4]
    img = Image.new("RGB", (width, height), BACKGROUNDS[index % 3])
    draw_shape(ImageDraw.Draw(img), shape, shape_box(width, height, side, min(width, height) // 2),
               COLORS[color])
    return img, {"color": color, "shape": shape, "side": side}


def image_record(index: int, facts: dict, rng: random.Random) -> dict:
    q_shape = "What shape is in the image?"
    first = f"<image>\n{q_shape}" if index % 2 == 0 else f"{q_shape}\n<image>"
    turns = [("human", first), ("gpt", f"A {facts['color']} {facts['shape']}.")]
    extra = [("What color is the shape?\nAnswer the question using a single word or phrase.",
              facts["color"].capitalize()),
             ("Where is the shape?", f"It is on the {facts['side']}."
              if facts["side"] != "center" else "It is in the center."),
             (f"Is there a {rng.choice(SHAPES)} in the image?", None)]
    for question, answer in extra[:index % 4]:
        if answer is None:
            asked = question.split()[3]
            answer = "Yes" if asked == facts["shape"] else "No"
        turns += [("human", question), ("gpt", answer)]
    return {"id": f"tiny-{index:03d}", "image": f"images/shape_{index:02d}.png",
            "conversations": [{"from": f, "value": v} for f, v in turns]}


def text_record(index: int, rng: random.Random) -> dict:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    color = rng.choice(list(COLORS))
    pairs = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
             (f"Name a shape that has {3 + index % 2} sides.",
              "A triangle." if index % 2 == 0 else "A square.")]
    if index % 3 == 0:
        pairs.append((f"What do you get when you mix {color} with white?",
                      f"A lighter shade of {color}."))
    turns = [("human", q) if k == 0 else ("gpt", q) for pair in pairs for k, q in enumerate(pair)]
    return {"id": f"tiny-text-{index:03d}",
            "conversations": [{"from": f, "value": v} for f, v in turns]}


def make_demo_image() -> Image.Image:
    img = Image.new("RGB", (96, 72), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    draw_shape(draw, "circle", shape_box(96, 72, "left", 26), COLORS["red"])
    draw_shape(draw, "square", shape_box(96, 72, "center", 22), COLORS["blue"])
    draw_shape(draw, "triangle", shape_box(96, 72, "right", 26), COLORS["green"])
    return img


def generate(out_dir: str, num_images: int = 16, num_text: int = 8) -> str:
    """Write the data set under `out_dir`; returns the JSON path."""
    rng = random.Random(0)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    records = []
    for i in range(num_images):
        img, facts = make_image(i)
        img.save(os.path.join(out_dir, "images", f"shape_{i:02d}.png"), optimize=True)
        records.append(image_record(i, facts, rng))
    for i in range(num_text):
        # Interleave text-only records so every shuffle seed mixes modalities.
        records.insert(2 * i + 1, text_record(i, rng))
    make_demo_image().save(os.path.join(out_dir, "demo.png"), optimize=True)
    path = os.path.join(out_dir, "tiny_llava.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
        f.write("\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    print(generate(parser.parse_args().out))


if __name__ == "__main__":
    main()
