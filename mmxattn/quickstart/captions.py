"""A small captioning set for the quickstart, generated on the user's machine.

Each image is a rendered scene of one or two shapes (circle, square, triangle, diamond) in six colours,
two sizes, placed in the four quadrants of a plain background with some jitter, e.g.

    "a large red circle at the top left and a small blue square at the bottom right"

Each image has three reference captions in different wordings (and, with two shapes, different orders),
so evaluation scores against several references as on COCO. Written as JPEG files plus COCO captions JSON
(`captions_{train,valid,test}.json`, images under `images/`), so the real COCO reader is what runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, ImageDraw

from . import stamp

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30),
           "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.22, "large": 0.4}  # shape size as a fraction of the image side
POSITIONS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float, fill) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    elif shape == "square":
        draw.rectangle([x - radius, y - radius, x + radius, y + radius], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=fill)
    else:  # diamond
        draw.polygon([(x, y - radius), (x + radius, y), (x, y + radius), (x - radius, y)], fill=fill)


def _phrase(obj: dict, rng: random.Random) -> str:
    return f"a {rng.choice(SIZE_WORDS[obj['size']])} {obj['colour']} {obj['shape']}"


def _captions(objects: list[dict], rng: random.Random) -> list[str]:
    """Three references in different wordings; with two objects, both orders of mention occur."""
    if len(objects) == 1:
        (obj,) = objects
        templates = ["{a} at the {p}", "{a} in the {p} corner", "there is {a} at the {p}"]
        return [t.format(a=_phrase(obj, rng), p=obj["position"]) for t in templates]
    first, second = objects
    return [
        f"{_phrase(first, rng)} at the {first['position']} and {_phrase(second, rng)} at the {second['position']}",
        f"{_phrase(second, rng)} at the {second['position']} and {_phrase(first, rng)} at the {first['position']}",
        f"{_phrase(first, rng)} in the {first['position']} corner and {_phrase(second, rng)} in the {second['position']} corner",
    ]


def make_scene(rng: random.Random, size: int = 96) -> tuple[Image.Image, list[str], str]:
    """(image, three reference captions, a canonical description used to keep test scenes out of training)."""
    background = tuple(rng.randint(200, 250) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    count = rng.choice([1, 2, 2])
    positions = rng.sample(list(POSITIONS), count)
    # mention order: top row before bottom row, left before right (the way people usually scan)
    positions.sort(key=lambda p: (POSITIONS[p][1], POSITIONS[p][0]))
    objects = []
    for position in positions:
        obj = {"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)), "size": rng.choice(list(SIZES)),
               "position": position}
        col, row = POSITIONS[position]
        radius = SIZES[obj["size"]] * size / 2 * rng.uniform(0.9, 1.1)
        half = size / 2
        slack = max(0.0, half / 2 - radius - 2)  # jitter inside the quadrant without leaving it
        centre = (col * half + half / 2 + rng.uniform(-slack, slack), row * half + half / 2 + rng.uniform(-slack, slack))
        jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[obj["colour"]])
        _draw_shape(draw, obj["shape"], centre, radius, jitter)
        objects.append(obj)
    key = " | ".join(f"{o['size']} {o['colour']} {o['shape']} {o['position']}" for o in objects)
    return image, _captions(objects, rng), key


# make(rng, split) -> (image, its reference captions, a key that identifies its content)
MakeImage = Callable[[random.Random, str], tuple[Image.Image, list[str], str]]


def write_coco_splits(root: Path, make: MakeImage, counts: Sequence[tuple[str, int]], rng: random.Random, *,
                      suffix: str = ".jpg", unseen: bool = True) -> None:
    """For each (split, count), in that order: `count` images made by `make(rng, split)`, saved as
    images/<split>/00001<suffix>, ... under root (JPEG at quality 92), and their references in
    captions_<split>.json (COCO captions JSON; annotation ids run on across the splits).

    With `unseen`, an image of a split other than train has a key no other image of it has, and no image
    of a later split has it either: write the evaluation splits first to keep them out of training.
    """
    held_out: set[str] = set()
    annotation_id = 0
    for split, count in counts:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        while len(images) < count:
            image, captions, key = make(rng, split)
            if unseen and key in held_out:
                continue
            if unseen and split != "train":
                held_out.add(key)
            image_id = len(images) + 1
            file_name = f"{split}/{image_id:05d}{suffix}"
            image.save(root / "images" / file_name, **({"quality": 92} if suffix == ".jpg" else {}))
            images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
            for caption in captions:
                annotation_id += 1
                annotations.append({"id": annotation_id, "image_id": image_id, "caption": caption})
        (root / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))


def write_captions(root: str | Path, *, train: int = 3000, valid: int = 200, test: int = 200, seed: int = 1234,
                   size: int = 96) -> Path:
    """Writes images and COCO captions JSON under root (once: an existing complete set is kept)."""
    root = Path(root)
    description = f"synthetic-captions v1 seed={seed} train={train} valid={valid} test={test} size={size}"
    if stamp.begin(root, description):  # refuses a folder holding anything it did not write
        return root
    splits = (("test", test), ("valid", valid), ("train", train))  # evaluation first: its scenes stay out of training
    write_coco_splits(root, lambda rng, split: make_scene(rng, size), splits, random.Random(seed))
    stamp.finish(root, description)
    return root
