"""A synthetic vision-text data set: coloured shapes on varied backgrounds, with captions.

No CLIP weights or image data sets are reachable offline, so the embedded CLIP
default is trained from scratch on pictures this module draws: every image is a
shape x colour x size x position x background, with pixel noise and jitter, and
its caption names the attributes in varied phrasing ("a photo of a small red
circle in the top left on a black background", "an image of a blue star").

Zero-shot classes are colour + shape ("red circle"). Held-out sets answer two
questions about generalisation:

* ``test``: attribute combinations (size, colour, shape, position, background)
  that never occur in training; each colour-shape pair was seen in other settings.
* ``unseen_pairs``: colour-shape pairs never seen in training at all (e.g. no
  red circle was ever shown, though red things and circles were).

`write_dataset` writes JPEG files plus CSV files (``image,caption,label``), the
class list and the prompt templates; training reads them like any user data.
Deterministic for a given seed. Pillow and numpy only.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
}
SIZES = {"small": (0.2, 0.25), "large": (0.31, 0.38)}  # radius as a fraction of the image side
POSITIONS = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
BACKGROUNDS = ("white", "black", "gray", "noisy")
# Bumped whenever drawing changes, so `write_dataset` regenerates older folders.
GENERATOR_VERSION = 2

# Zero-shot prompts: the wording training captions also use, so they are in distribution.
PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
)
_CAPTION_PREFIXES = ("a photo of", "a picture of", "an image of", "a drawing of")
# A held-out colour-shape pair per colour, covering every shape: each colour and each
# shape is still seen in training, only these combinations are not.
UNSEEN_PAIRS = (
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "star"),
    ("purple", "cross"),
    ("orange", "square"),
)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    @property
    def label(self) -> str:
        """The zero-shot class: colour and shape."""
        return f"{self.colour} {self.shape}"


def classes() -> list[str]:
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def all_scenes() -> list[Scene]:
    return [Scene(*combo) for combo in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS)]


def split_scenes(seed: int = 0, test_fraction: float = 0.15) -> dict[str, list[Scene]]:
    """Attribute combinations per split: train, test (unseen combinations), unseen_pairs."""
    rng = random.Random(seed)
    held_pairs = {(c, s) for c, s in UNSEEN_PAIRS}
    unseen = [s for s in all_scenes() if (s.colour, s.shape) in held_pairs]
    seen = [s for s in all_scenes() if (s.colour, s.shape) not in held_pairs]
    rng.shuffle(seen)
    n_test = int(len(seen) * test_fraction)
    return {"train": seen[n_test:], "test": seen[:n_test], "unseen_pairs": unseen}


def caption(scene: Scene, rng: random.Random) -> str:
    """Varied phrasing: size, position and background are each mentioned or not."""
    words = [rng.choice(_CAPTION_PREFIXES)]
    subject = f"{scene.colour} {scene.shape}"
    if rng.random() < 0.6:
        subject = f"{scene.size} {subject}"
    words.append(("an " if subject[0] in "aeiou" else "a ") + subject)
    if rng.random() < 0.5:
        words.append("in the center" if scene.position == "center" else f"in the {scene.position}")
    if rng.random() < 0.5:
        words.append(f"on a {scene.background} background")
    return " ".join(words)


def render(scene: Scene, rng: random.Random, size: int = 64) -> Image.Image:
    """Draw one scene with jittered colour, size, position, rotation and pixel noise."""
    nprng = np.random.default_rng(rng.randrange(2**32))
    background = _background(scene.background, size, nprng)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    low, high = SIZES[scene.size]
    radius = size * rng.uniform(low, high)
    cx, cy = POSITIONS[scene.position]
    jitter = 0.05 * size
    cx, cy = cx * size + rng.uniform(-jitter, jitter), cy * size + rng.uniform(-jitter, jitter)
    colour = tuple(int(np.clip(v + rng.uniform(-25, 25), 0, 255)) for v in COLOURS[scene.colour])
    _draw_shape(draw, scene.shape, cx, cy, radius, rng.uniform(-0.15, 0.15), colour)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += nprng.normal(0.0, 6.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "noisy":
        # Mottled, mostly grey texture: luminance blotches, a faint tint and grain.
        coarse = rng.uniform(90, 170, (6, 6)).astype(np.uint8)
        texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
        texture = texture[:, :, None] + rng.uniform(-15, 15, 3)
        return np.clip(texture + rng.normal(0, 10, texture.shape), 0, 255).astype(np.uint8)
    level = {"white": 235, "black": 20, "gray": 128}[kind] + rng.uniform(-15, 15)
    tint = rng.uniform(-8, 8, 3)
    return np.clip(np.full((size, size, 3), level) + tint, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    def rotated(points):
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]

    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.polygon(rotated([(-s, -s), (s, -s), (s, s), (-s, s)]), fill=fill)
    elif shape == "triangle":
        draw.polygon(rotated([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]), fill=fill)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            points.append((radius * math.cos(a), radius * math.sin(a)))
        draw.polygon(rotated(points), fill=fill)
    elif shape == "cross":
        w = r * 0.33
        arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        draw.polygon(rotated(arm), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


@dataclass(frozen=True)
class ShapesDataset:
    """Where `write_dataset` put things."""

    folder: Path
    train: Path
    val: Path
    test: Path
    unseen_pairs: Path
    classes: Path
    templates: Path


def write_dataset(
    folder: Path,
    n_train: int = 12000,
    n_val: int = 600,
    n_test: int = 600,
    n_unseen: int = 300,
    image_size: int = 64,
    seed: int = 0,
) -> ShapesDataset:
    """Write JPEG images and ``image,caption,label`` CSVs; reuses a complete earlier run.

    ``val`` draws new images of training combinations (model selection); ``test``
    and ``unseen_pairs`` hold combinations training never saw (see module doc).
    """
    folder = Path(folder)
    manifest = folder / "dataset.json"
    settings = {
        "n_train": n_train, "n_val": n_val, "n_test": n_test, "n_unseen": n_unseen,
        "image_size": image_size, "seed": seed, "version": GENERATOR_VERSION,
    }
    result = ShapesDataset(
        folder, folder / "train.csv", folder / "val.csv", folder / "test.csv", folder / "unseen_pairs.csv",
        folder / "classes.txt", folder / "templates.json",
    )
    if manifest.exists() and json.loads(manifest.read_text()) == settings:
        return result
    scenes = split_scenes(seed)
    rng = random.Random(seed)
    jobs = [
        ("train", scenes["train"], n_train),
        ("val", scenes["train"], n_val),
        ("test", scenes["test"], n_test),
        ("unseen_pairs", scenes["unseen_pairs"], n_unseen),
    ]
    for split, pool, count in jobs:
        images = folder / split
        images.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            scene = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
            name = f"{split}/{i:05d}.jpg"
            render(scene, rng, image_size).save(folder / name, quality=92)
            rows.append({"image": name, "caption": caption(scene, rng), "label": scene.label})
        rng.shuffle(rows)
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "caption", "label"])
            writer.writeheader()
            writer.writerows(rows)
    result.classes.write_text("".join(f"{c}\n" for c in classes()), encoding="utf-8")
    result.templates.write_text(json.dumps(list(PROMPT_TEMPLATES), indent=2), encoding="utf-8")
    manifest.write_text(json.dumps(settings))
    return result
