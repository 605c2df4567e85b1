"""The captioning base recipe on data it was not tuned on: several generated tasks, one of real handwriting.

    python recipes/captioning/other_tasks.py                          # every task and recipe (hours on 2 CPU cores)
    python recipes/captioning/other_tasks.py handwritten-digits       # some tasks
    python recipes/captioning/other_tasks.py --recipes base           # some recipes
    python recipes/captioning/other_tasks.py --list

Each task is written as a user's own captioned images would be (COCO captions JSON per split plus an
images/ folder, in a folder of its own under data/other-tasks/) and trained with exactly what a user
would type; nothing about the task is passed but its data path (and which split to score at the end):
- base:              mmx-train recipe=captioning/base data.root=<folder> data.test=captions_test.json
- quickstart:        mmx-train recipe=captioning/quickstart data.root=<folder> data.synthetic=null
                     (the quickstart's generator must be switched off to read someone else's folder)
- quickstart-squash: the same with encoder.resize=squash, the image handling before aspect-preserving
                     resizing existed (what the issue's user ran)
The table printed at the end (test CIDEr-D and BLEU-4, optimizer steps, wall time) is what
recipes/captioning/README.md records.

The tasks differ from the quickstart's scenes of coloured shapes in vocabulary, caption style, image size,
aspect ratio and colour mode:
- handwritten-digits: real handwritten digits (scikit-learn's `load_digits`, 8×8 scans of 43 writers)
  composed into grayscale strips of 3-5 digits, 32 × 80-170 pixels, to be transcribed as words
  ("seven two nine"); validation and test strips use digit scans that no training strip uses.
- printed-words: lines of 2-3 words from a 24-word vocabulary, printed in several sizes and colours on
  tinted, speckled backgrounds, about 25 × 100-250 pixels, RGB.
- tall-stacks: 2-3 shapes stacked in a column, 48 pixels wide and 2 or 3 times as tall, captioned top
  to bottom ("a red circle above a blue square above ..."), two references each, JPEG.
- flags: 2 or 3 horizontal or vertical stripes in 7 colours, 3:2 RGBA PNGs with a transparent margin
  ("three vertical stripes of green white and red"), two references each.
Validation and test captions (digit sequences, word lines, stacks) never occur in training, except for
flags, whose 588 possible flags are too few to hold 300 out.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

# run as a file (python recipes/captioning/other_tasks.py), so the runner it shares with the other recipes'
# other_tasks.py is importable only with recipes/ on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: recipes/ is a package
from recipes.other_tasks_common import REPO, print_table, table_row, train, wall_time  # noqa: E402

WORK = REPO / "data" / "other-tasks"

DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
WORDS = ("apple river stone cloud lamp music garden window silver paper tiger candle mirror forest bread "
         "ocean pencil rocket winter dragon coffee castle violin harbor").split()
COLOURS = {"red": (210, 40, 40), "green": (30, 150, 60), "blue": (40, 70, 200), "black": (20, 20, 20),
           "orange": (240, 130, 20), "white": (250, 250, 250), "yellow": (240, 210, 30)}
NUMBERS = {2: "two", 3: "three"}

# make(rng, split) -> (image, its reference captions, a key that identifies its content)
Make = Callable[[random.Random, str], tuple[Image.Image, list[str], str]]


@functools.lru_cache(maxsize=1)
def _digit_scans() -> tuple[list, list, list]:
    """(8×8 scans as uint8 ink-on-paper arrays, labels, test-side indices): the last quarter of the scans is
    kept for validation and test strips."""
    import numpy as np

    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("handwritten-digits needs scikit-learn's scans: pip install -e \".[experiments]\"") from e

    digits = load_digits()
    scans = [(255 - image * (255 / 16)).astype(np.uint8) for image in digits.images]  # dark ink, light paper
    return scans, [int(t) for t in digits.target], list(range(len(scans) * 3 // 4, len(scans)))


def handwritten_digits(rng: random.Random, split: str) -> tuple[Image.Image, list[str], str]:
    scans, labels, held_out = _digit_scans()
    pool = range(len(scans) * 3 // 4) if split == "train" else held_out
    picks = [rng.choice(pool) for _ in range(rng.randint(3, 5))]
    tiles = [Image.fromarray(scans[i]).resize((24, 24), Image.BILINEAR) for i in picks]
    gaps = [rng.randint(0, 8) for _ in tiles]
    strip = Image.new("L", (8 + sum(24 + g for g in gaps), 32), rng.randint(235, 255))
    x = 4
    for tile, gap in zip(tiles, gaps):
        strip.paste(tile, (x, rng.randint(0, 8)))
        x += 24 + gap
    words = " ".join(DIGIT_WORDS[labels[i]] for i in picks)
    return strip, [words], words


def printed_words(rng: random.Random, split: str) -> tuple[Image.Image, list[str], str]:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 3)))
    font = ImageFont.load_default(size=rng.randint(14, 22))
    left, top, right, bottom = font.getbbox(words)
    margin = rng.randint(3, 10)
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 60)):  # speckles
        x, y = rng.randrange(image.width), rng.randrange(image.height)
        draw.point((x, y), fill=tuple(rng.randint(100, 200) for _ in range(3)))
    draw.text((margin - left, margin - top), words, font=font, fill=tuple(rng.randint(0, 90) for _ in range(3)))
    return image, [words], words


def tall_stacks(rng: random.Random, split: str) -> tuple[Image.Image, list[str], str]:
    from mmxattn.quickstart.captions import SHAPES, _draw_shape

    width = 48
    objects = [(rng.choice([c for c in COLOURS if c != "white"]), rng.choice(SHAPES)) for _ in range(rng.randint(2, 3))]
    image = Image.new("RGB", (width, width * len(objects)), tuple(rng.randint(215, 250) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for row, (colour, shape) in enumerate(objects):
        centre = (width / 2 + rng.uniform(-4, 4), width * (row + 0.5) + rng.uniform(-4, 4))
        _draw_shape(draw, shape, centre, width * rng.uniform(0.28, 0.38), COLOURS[colour])
    phrases = [f"a {colour} {shape}" for colour, shape in objects]
    captions = [" above ".join(phrases), "from top to bottom " + ", ".join(phrases[:-1]) + " and " + phrases[-1]]
    return image, captions, captions[0]


def flags(rng: random.Random, split: str) -> tuple[Image.Image, list[str], str]:
    count, vertical = rng.choice([2, 3]), rng.random() < 0.5
    colours = [rng.choice(list(COLOURS))]
    while len(colours) < count:
        colours.append(rng.choice([c for c in COLOURS if c != colours[-1]]))
    margin = rng.randint(0, 8)
    image = Image.new("RGBA", (90, 60), (0, 0, 0, 0))  # transparent around the flag
    draw = ImageDraw.Draw(image)
    inner_w, inner_h = 90 - 2 * margin, 60 - 2 * margin
    for i, colour in enumerate(colours):
        if vertical:
            box = (margin + i * inner_w // count, margin, margin + (i + 1) * inner_w // count - 1, 59 - margin)
        else:
            box = (margin, margin + i * inner_h // count, 89 - margin, margin + (i + 1) * inner_h // count - 1)
        draw.rectangle(box, fill=(*COLOURS[colour], 255))
    direction = "vertical" if vertical else "horizontal"
    named = " ".join(colours[:-1]) + " and " + colours[-1]
    captions = [f"{NUMBERS[count]} {direction} stripes of {named}", f"a flag with {NUMBERS[count]} {direction} stripes {named}"]
    return image, captions, captions[0]


# name -> (make, training images, evaluation keys kept out of training, file suffix)
TASKS: dict[str, tuple[Make, int, bool, str]] = {
    "handwritten-digits": (handwritten_digits, 1200, True, ".png"),
    "printed-words": (printed_words, 1200, True, ".png"),
    "tall-stacks": (tall_stacks, 1000, True, ".jpg"),
    "flags": (flags, 800, False, ".png"),
}


def write_task(name: str, seed: int = 7, evaluation: int = 150) -> Path:
    """Images under images/<split>/ and captions_<split>.json, as the quickstart lays them out (once)."""
    from mmxattn.quickstart.captions import write_coco_splits

    make, train_size, unseen, suffix = TASKS[name]
    folder = WORK / name
    if not (folder / "captions_train.json").is_file():
        write_coco_splits(folder, make, (("test", evaluation), ("valid", evaluation), ("train", train_size)),
                          random.Random(seed), suffix=suffix, unseen=unseen)
    return folder


RECIPES = {
    "base": ["recipe=captioning/base", "data.test=captions_test.json"],
    "quickstart": ["recipe=captioning/quickstart", "data.synthetic=null"],
    "quickstart-squash": ["recipe=captioning/quickstart", "data.synthetic=null", "encoder.resize=squash"],
}


def run(task: str, recipe: str) -> dict:
    select, *others = RECIPES[recipe]  # recipe=..., then the overrides that follow data.root
    return train(f"captioning-{task}-{recipe}", [select, f"data.root={write_task(task)}", *others])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="tasks to run (default: all)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--list", action="store_true", help="list the tasks and exit")
    parser.add_argument("--write-only", action="store_true", help="write the tasks' data and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(TASKS))
        return
    for name in args.names or list(TASKS):
        if args.write_only:
            print(write_task(name))
    if args.write_only:
        return
    rows = []
    for name in args.names or list(TASKS):
        for recipe in args.recipes:
            r = run(name, recipe)
            cider, bleu = r.get("test_cider", float("nan")), r.get("test_bleu", float("nan"))
            rows.append(table_row([name, recipe, f"{cider:.1f}", f"{bleu:.2f}", r["global_step"],
                                   wall_time(r["wall_seconds"])]))
            print(rows[-1], flush=True)
    print_table(["task", "recipe", "test CIDEr-D", "test BLEU-4", "steps", "wall time"], rows, left=2)


if __name__ == "__main__":
    main()
