"""The translation base recipe on data it was not tuned on: several generated tasks and real text.

    python recipes/translation/other_tasks.py                 # every task (about an hour on 2 CPU cores)
    python recipes/translation/other_tasks.py numbers dates   # some of them
    python recipes/translation/other_tasks.py --list

Each task is written as a user's own corpus would be (line-aligned train/val/test files in a folder of
its own under data/other-tasks/) and trained with exactly what a user would type:
`mmx-train recipe=translation/base data.root=<folder> data.src_lang=.. data.tgt_lang=.. data.test=test`.
Nothing about a task is passed to the recipe but its data path and language names. The table printed at
the end (test sacreBLEU, steps, wall time) is what recipes/translation/README.md records.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
from pathlib import Path

# run as a file (python recipes/translation/other_tasks.py), so the runner it shares with the other recipes'
# other_tasks.py is importable only with recipes/ on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: recipes/ is a package
from recipes.other_tasks_common import REPO, print_table, table_row, train, wall_time  # noqa: E402

WORK = REPO / "data" / "other-tasks"
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
MONTHS = "January February March April May June July August September October November December".split()
ORDINALS = {1: "first", 2: "second", 3: "third", 5: "fifth", 8: "eighth", 9: "ninth", 12: "twelfth", 20: "twentieth",
            30: "thirtieth"}


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("four thousand seventy one")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def ordinal_words(n: int) -> str:
    if n in ORDINALS:
        return ORDINALS[n]
    if n > 20 and n % 10:
        return TENS[n // 10] + " " + ordinal_words(n % 10)
    word = number_words(n)
    return word[:-1] + "ieth" if word.endswith("y") else word + "th"


def numbers(rng: random.Random) -> tuple[str, str]:
    """Digits into words, grouped as people write them: "40 071" -> "forty thousand seventy one"."""
    n = rng.choice([rng.randrange(100), rng.randrange(1000), rng.randrange(1_000_000)])
    return f"{n:,}".replace(",", " "), number_words(n)


def dates(rng: random.Random) -> tuple[str, str]:
    """ISO dates into spoken English: "2024-03-05" -> "the fifth of March twenty twenty four"."""
    year, month, day = rng.randrange(1900, 2100), rng.randrange(1, 13), rng.randrange(1, 29)
    spoken_year = number_words(year // 100) + " " + (number_words(year % 100) if year % 100 >= 10 else
                                                      ("hundred" if year % 100 == 0 else "oh " + ONES[year % 100]))
    return f"{year}-{month:02d}-{day:02d}", f"the {ordinal_words(day)} of {MONTHS[month - 1]} {spoken_year}"


# A second invented language: verb first, case suffixes instead of word order, a 60-word vocabulary unlike
# the quickstart's, and sentences up to three clauses long.
SUBJECTS = {"the king": "reko", "the queen": "regina", "a sailor": "nauto", "the baker": "pistor", "my sister": "soro",
            "our teacher": "magistro", "the old farmer": "agrikolo", "a tired soldier": "milito", "the children": "infanti",
            "two merchants": "merkatori"}
VERBS = {"buys": "emas", "sells": "vendas", "builds": "konstruas", "finds": "trovas", "loses": "perdas",
         "repairs": "riparas", "paints": "pingas", "hides": "kasxas", "cleans": "purigas", "counts": "kalkulas"}
OBJECTS = {"a ship": "navon", "the bread": "panon", "a map": "karton", "the lantern": "lanternon", "some coins": "monerojn",
           "a wooden box": "lignan keston", "the red door": "rugxan pordon", "an old clock": "malnovan horlogxon",
           "the nets": "retojn", "a letter": "leteron"}
PLACES = {"in the harbour": "en haveno", "at the market": "cxe bazaro", "near the castle": "apud kastelo",
          "under the bridge": "sub ponto", "in the forest": "en arbaro", None: ""}
JOINERS = {"and then": "kaj poste", "because": "cxar", "while": "dum"}


def clauses(rng: random.Random) -> tuple[str, str]:
    """English clauses into a verb-first language with an accusative suffix, joined by conjunctions."""
    english, other = [], []
    for i in range(rng.choice([1, 1, 2, 3])):
        if i:
            joiner = rng.choice(list(JOINERS))
            english.append(joiner)
            other.append(JOINERS[joiner])
        subject, verb, obj, place = (rng.choice(list(d)) for d in (SUBJECTS, VERBS, OBJECTS, PLACES))
        plural = subject in ("the children", "two merchants")
        english += [subject, verb[:-1] if plural else verb, obj] + ([place] if place else [])
        other += [VERBS[verb], SUBJECTS[subject], OBJECTS[obj]] + ([PLACES[place]] if place else [])
    return " ".join(english).capitalize() + ".", " ".join(other).capitalize() + "."


GENERATED = {"numbers": (numbers, 3000), "dates": (dates, 3000), "clauses": (clauses, 4000)}


def write_generated(name: str, seed: int = 11) -> Path:
    make, train_size = GENERATED[name]
    folder = WORK / name
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for split, size in (("test", 300), ("val", 300), ("train", train_size)):
        pairs = []
        while len(pairs) < size:
            src, tgt = make(rng)
            if split == "train" or src not in seen:  # test and validation inputs never occur in training
                if split != "train":
                    seen.add(src)
                elif src in seen:
                    continue
                pairs.append((src, tgt))
        splits[split] = pairs
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        for lang, column in (("src", 0), ("tgt", 1)):
            (folder / f"{split}.{lang}").write_text("".join(p[column] + "\n" for p in pairs), encoding="utf-8")
    return folder


def write_multi30k_small(train_size: int = 5000) -> Path:
    """Real text: the first `train_size` Multi30k training pairs, en -> fr (the Multi30k recipe is tuned on
    en -> de with all 29,000), with the real validation and test_2016_flickr sets."""
    folder = WORK / f"multi30k-fr-{train_size}"
    folder.mkdir(parents=True, exist_ok=True)
    for split, name, limit in (("train", "train", train_size), ("val", "val", None), ("test", "test_2016_flickr", None)):
        for lang in ("en", "fr"):
            lines = gzip.open(MULTI30K / f"{name}.{lang}.gz", "rt", encoding="utf-8").read().splitlines()[:limit]
            (folder / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


def tasks() -> dict[str, tuple]:
    """name -> (writer, src_lang, tgt_lang)."""
    found = {name: (lambda n=name: write_generated(n), "src", "tgt") for name in GENERATED}
    if MULTI30K.is_dir():
        found["multi30k-fr-5k"] = (write_multi30k_small, "en", "fr")
    return found


def run(name: str, writer, src: str, tgt: str, overrides: list[str]) -> dict:
    return train(f"translation-{name}", ["recipe=translation/base", f"data.root={writer()}", f"data.src_lang={src}",
                                         f"data.tgt_lang={tgt}", "data.test=test", *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="tasks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the tasks and exit")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra mmx-train override, e.g. --set trainer.max_time=00:00:20:00 (repeatable)")
    args = parser.parse_args()
    available = tasks()
    if args.list:
        print("\n".join(available))
        return
    rows = []
    for name in args.names or list(available):
        results = run(name, *available[name], args.set)
        rows.append(table_row([name, f"{results.get('test_bleu', float('nan')):.2f}", results["global_step"],
                               wall_time(results["wall_seconds"])]))
        print(rows[-1], flush=True)
    print_table(["task", "test sacreBLEU", "steps", "wall time"], rows)


if __name__ == "__main__":
    main()
