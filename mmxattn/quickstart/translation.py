"""A small made-up language pair for the translation quickstart, generated on the user's machine.

English-like sentences ("two small dogs chase the red ball near the river") and their translation into
an invented language with its own words, gendered articles and adjective endings, plural suffixes,
adjectives after nouns, postpositions and verb-final word order. Learning it needs real alignment and
reordering, not copying, yet a small model learns it on a laptop CPU in minutes.
Written as line-aligned files `{train,valid,test}.{en,xx}` so the real parallel-text reader runs.
"""

from __future__ import annotations

import random
from pathlib import Path

from . import stamp

NOUNS = {  # English singular, plural, invented stem, gender
    "cat": ("cats", "mizu", "f"), "dog": ("dogs", "karo", "m"), "bird": ("birds", "pilo", "m"),
    "horse": ("horses", "dravi", "f"), "man": ("men", "tesk", "m"), "woman": ("women", "nuvel", "f"),
    "child": ("children", "bimo", "m"), "girl": ("girls", "fasen", "f"), "teacher": ("teachers", "lorvan", "m"),
    "farmer": ("farmers", "gestu", "m"), "doctor": ("doctors", "medra", "f"), "house": ("houses", "kasto", "f"),
    "car": ("cars", "vruma", "m"), "tree": ("trees", "albor", "m"), "ball": ("balls", "pela", "f"),
    "book": ("books", "libru", "m"), "apple": ("apples", "malo", "f"), "river": ("rivers", "flumo", "m"),
    "garden": ("gardens", "orta", "f"), "table": ("tables", "mensi", "f"), "boat": ("boats", "navo", "m"),
    "city": ("cities", "urbe", "f"), "hat": ("hats", "kapel", "m"), "flower": ("flowers", "flora", "f"),
}
ADJECTIVES = {"red": "rub", "blue": "azul", "green": "verd", "small": "pic", "big": "grand", "old": "vek",
              "young": "jun", "happy": "fel", "tall": "alt", "quiet": "kalm", "yellow": "flav", "black": "nigr"}
VERBS = {"sees": "vidas", "likes": "amas", "finds": "trovas", "paints": "pentras", "follows": "sekvas",
         "carries": "portas", "watches": "spektas", "chases": "casas", "visits": "vizitas", "draws": "skizas"}
PREPOSITIONS = {"near": "apud", "under": "sub", "behind": "post", "beside": "flank", "inside": "en"}
DETERMINERS = {"the": {"m": "lo", "f": "la"}, "a": {"m": "un", "f": "una"}, "two": {"m": "du", "f": "du"},
               "three": {"m": "tri", "f": "tri"}}


def _noun_phrase(rng: random.Random) -> tuple[list[str], list[str], bool]:
    noun = rng.choice(list(NOUNS))
    plural_en, stem, gender = NOUNS[noun]
    det = rng.choice(list(DETERMINERS))
    plural = det in ("two", "three")
    adjectives = rng.sample(list(ADJECTIVES), rng.choice([0, 0, 1, 1, 2]))
    english = [det, *adjectives, plural_en if plural else noun]
    ending = "o" if gender == "m" else "a"
    invented = [DETERMINERS[det][gender], stem + ("i" if plural else "")]
    invented += [ADJECTIVES[a] + ending + ("s" if plural else "") for a in adjectives]
    return english, invented, plural


def make_pair(rng: random.Random) -> tuple[str, str]:
    subj_en, subj_xx, plural_subject = _noun_phrase(rng)
    obj_en, obj_xx, _ = _noun_phrase(rng)
    verb = rng.choice(list(VERBS))
    # the verb agrees with its subject in both languages: "dogs chase" / "... casan"
    verb_en = {"carries": "carry", "watches": "watch"}.get(verb, verb[:-1]) if plural_subject else verb
    verb_xx = VERBS[verb][:-1] + "n" if plural_subject else VERBS[verb]
    english, invented = subj_en + [verb_en] + obj_en, subj_xx + obj_xx
    if rng.random() < 0.5:
        prep = rng.choice(list(PREPOSITIONS))
        place_en, place_xx, _ = _noun_phrase(rng)
        english += [prep] + place_en
        invented += place_xx + [PREPOSITIONS[prep]]
    invented.append(verb_xx)  # verb-final
    return " ".join(english).capitalize() + ".", " ".join(invented).capitalize() + "."


def write_corpus(root: str | Path, *, train: int = 12000, valid: int = 400, test: int = 400, seed: int = 1234) -> Path:
    """Writes the corpus under root (once: an existing complete corpus with the same recipe is kept)."""
    root = Path(root)
    description = f"synthetic-translation v1 seed={seed} train={train} valid={valid} test={test}"
    if stamp.begin(root, description):  # refuses a folder holding anything it did not write
        return root
    rng = random.Random(seed)
    seen: set[str] = set()
    for split, size in (("test", test), ("valid", valid), ("train", train)):
        pairs = []
        while len(pairs) < size:
            en, xx = make_pair(rng)
            if en not in seen:  # keep test and valid sentences out of training
                seen.add(en)
                pairs.append((en, xx))
        for lang, column in (("en", 0), ("xx", 1)):
            (root / f"{split}.{lang}").write_text("".join(p[column] + "\n" for p in pairs), encoding="utf-8")
    stamp.finish(root, description)
    return root
