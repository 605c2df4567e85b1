"""A translation task that needs a picture: the multimodal quickstart, generated on the user's machine.

Each sample is an English-like sentence with one ambiguous noun ("the old bat sees two cats near the
river"), a small picture of what that noun means here, and the translation into the invented language of
the translation quickstart (mmxattn/quickstart/translation.py). The two meanings of each ambiguous
noun translate to different words of different genders, so the article and the adjective endings change
too: "lo nokto veko" (the old bat, the animal) against "la bastona veka" (the old bat, the club).

- The sentence alone leaves each ambiguous noun a coin flip: the meaning is drawn independently of it.
- The picture alone names the noun's meaning, but nothing of the rest of the sentence.
- Only both together give the whole translation.

Pictures are 32×32 PNGs: one glyph per meaning (12 in all: disc, ring, square, triangle, ...) in a
random colour, size and place on a noisy background. Written as TSV files `{train,valid,test}.tsv` with
columns `id`, `src` (the sentence), `image` (path relative to the root) and `tgt`, read by the
multi-source TSV reader (mmxattn/data/multisource.py).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from . import stamp
from .translation import ADJECTIVES, DETERMINERS, NOUNS, PREPOSITIONS, VERBS

# English singular -> (plural, ((meaning, invented stem, gender, glyph), (meaning, stem, gender, glyph)))
AMBIGUOUS = {
    "bat": ("bats", (("animal", "nokto", "m", "disc"), ("club", "bastona", "f", "vbar"))),
    "mouse": ("mice", (("animal", "muso", "m", "ring"), ("device", "klika", "f", "square"))),
    "crane": ("cranes", (("bird", "grua", "f", "triangle"), ("machine", "levilo", "m", "cross"))),
    "seal": ("seals", (("animal", "foka", "f", "diamond"), ("stamp", "sigelo", "m", "saltire"))),
    "pen": ("pens", (("writing", "plumo", "m", "hbar"), ("enclosure", "korta", "f", "frame"))),
    "bow": ("bows", (("weapon", "arko", "m", "chevron"), ("ribbon", "banda", "f", "dots"))),
}
IMAGE_SIZE = 32


def _noun_phrase(rng: random.Random, noun: tuple[str, str, str, str]) -> tuple[list[str], list[str], bool]:
    """(English words, invented words, plural) for noun = (singular, plural, stem, gender)."""
    singular, plural_en, stem, gender = noun
    det = rng.choice(list(DETERMINERS))
    plural = det in ("two", "three")
    adjectives = rng.sample(list(ADJECTIVES), rng.choice([0, 1, 1, 2]))
    english = [det, *adjectives, plural_en if plural else singular]
    ending = "o" if gender == "m" else "a"
    invented = [DETERMINERS[det][gender], stem + ("i" if plural else "")]
    invented += [ADJECTIVES[a] + ending + ("s" if plural else "") for a in adjectives]
    return english, invented, plural


def _plain_noun(rng: random.Random) -> tuple[str, str, str, str]:
    singular = rng.choice(list(NOUNS))
    plural, stem, gender = NOUNS[singular]
    return singular, plural, stem, gender


def make_sample(rng: random.Random) -> tuple[str, str, str]:
    """(English sentence, translation, glyph of the ambiguous noun's meaning)."""
    word = rng.choice(list(AMBIGUOUS))
    plural_en, meanings = AMBIGUOUS[word]
    _, stem, gender, glyph = rng.choice(meanings)  # independent of everything else in the sentence
    ambiguous = (word, plural_en, stem, gender)
    ambiguous_is_subject = rng.random() < 0.5
    subj_en, subj_xx, plural_subject = _noun_phrase(rng, ambiguous if ambiguous_is_subject else _plain_noun(rng))
    obj_en, obj_xx, _ = _noun_phrase(rng, _plain_noun(rng) if ambiguous_is_subject else ambiguous)
    verb = rng.choice(list(VERBS))
    verb_en = {"carries": "carry", "watches": "watch"}.get(verb, verb[:-1]) if plural_subject else verb
    verb_xx = VERBS[verb][:-1] + "n" if plural_subject else VERBS[verb]
    english, invented = subj_en + [verb_en] + obj_en, subj_xx + obj_xx
    if rng.random() < 0.4:
        prep = rng.choice(list(PREPOSITIONS))
        place_en, place_xx, _ = _noun_phrase(rng, _plain_noun(rng))
        english += [prep] + place_en
        invented += place_xx + [PREPOSITIONS[prep]]
    invented.append(verb_xx)  # verb-final, as in the translation quickstart
    return " ".join(english).capitalize() + ".", " ".join(invented).capitalize() + ".", glyph


def draw_glyph(rng: random.Random, glyph: str, size: int = IMAGE_SIZE) -> Image.Image:
    """One glyph in a random dark colour, size and position on a light, noisy background."""
    background = tuple(rng.randint(170, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pixels = image.load()
    for _ in range(size * size // 8):  # speckle noise
        x, y = rng.randrange(size), rng.randrange(size)
        pixels[x, y] = tuple(max(0, min(255, c + rng.randint(-60, 60))) for c in background)
    draw = ImageDraw.Draw(image)
    colour = tuple(rng.randint(0, 110) for _ in range(3))
    side = rng.randint(size * 9 // 16, size * 13 // 16)
    x0, y0 = rng.randint(1, size - side - 1), rng.randint(1, size - side - 1)
    x1, y1 = x0 + side, y0 + side
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, max(3, side // 5)
    if glyph == "disc":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif glyph == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=colour, width=w)
    elif glyph == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif glyph == "frame":
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=w)
    elif glyph == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif glyph == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif glyph == "cross":
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=colour)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=colour)
    elif glyph == "saltire":
        draw.line((x0, y0, x1, y1), fill=colour, width=w)
        draw.line((x0, y1, x1, y0), fill=colour, width=w)
    elif glyph == "hbar":
        draw.rectangle((x0, cy - w, x1, cy + w), fill=colour)
    elif glyph == "vbar":
        draw.rectangle((cx - w, y0, cx + w, y1), fill=colour)
    elif glyph == "chevron":
        draw.line((x0, y1, cx, y0, x1, y1), fill=colour, width=w)
    elif glyph == "dots":
        r = side / 5
        for px, py in ((x0 + r, y0 + r), (x1 - r, y1 - r)):
            draw.ellipse((px - r, py - r, px + r, py + r), fill=colour)
    else:
        raise ValueError(f"unknown glyph {glyph!r}")
    return image


def meaning_accuracy(targets: list[str], hypotheses: list[str]) -> float:
    """% of samples whose hypothesis translates the ambiguous noun with the meaning the picture shows.

    Correct: the hypothesis has the reference's word for that noun (singular or plural) and not the
    other meaning's word. A text-only model that guesses scores about 50.
    """
    alternatives = {}
    for _, meanings in AMBIGUOUS.values():
        (_, first, _, _), (_, second, _, _) = meanings
        alternatives[first], alternatives[second] = second, first
    if len(targets) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(targets)} references")

    def words(text: str) -> set[str]:
        return {w.strip(".,").lower() for w in text.split()}

    correct = 0
    for target, hypothesis in zip(targets, hypotheses):
        target_words, hyp_words = words(target), words(hypothesis)
        stem = next(s for s in alternatives if s in target_words or s + "i" in target_words)
        other = alternatives[stem]
        correct += bool(hyp_words & {stem, stem + "i"}) and not hyp_words & {other, other + "i"}
    return 100.0 * correct / max(1, len(targets))


def write_multimodal_corpus(root: str | Path, *, train: int = 8000, valid: int = 300, test: int = 300,
                            seed: int = 1234) -> Path:
    """Writes pictures and `{split}.tsv` under root (once: an existing complete set is kept)."""
    root = Path(root)
    description = f"synthetic-multimodal v1 seed={seed} train={train} valid={valid} test={test}"
    if stamp.begin(root, description):  # refuses a folder holding anything it did not write
        return root
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    for split, size in (("test", test), ("valid", valid), ("train", train)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = ["id\tsrc\timage\ttgt\n"]
        while len(rows) <= size:
            english, invented, glyph = make_sample(rng)
            if (english, invented) in seen:  # keep valid/test samples (sentence + meaning) out of training
                continue
            seen.add((english, invented))
            index = len(rows) - 1
            relative = f"images/{split}/{index:05d}.png"
            draw_glyph(rng, glyph).save(root / relative)
            rows.append(f"{split}-{index}\t{english}\t{relative}\t{invented}\n")
        (root / f"{split}.tsv").write_text("".join(rows), encoding="utf-8")
    stamp.finish(root, description)
    return root


if __name__ == "__main__":
    # python -m mmxattn.quickstart.multimodal DATA_ROOT/test.tsv RUN/test.hyp
    import sys

    tsv, hyp = sys.argv[1:3]
    header, *rows = [line.split("\t") for line in Path(tsv).read_text(encoding="utf-8").splitlines() if line.strip()]
    targets = [row[header.index("tgt")] for row in rows]
    hyps = Path(hyp).read_text(encoding="utf-8").splitlines()
    print(f"meaning accuracy: {meaning_accuracy(targets, hyps):.1f}% of {len(hyps)} samples")
