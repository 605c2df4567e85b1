"""Rerun the quickstart recipes and rewrite the README's results table from what they reached.

    python recipes/reproduce.py                          # all quickstarts (about 25 minutes on 2 CPU cores)
    python recipes/reproduce.py translation/quickstart   # some of them
    python recipes/reproduce.py --check translation/quickstart   # no training: the newest run of it
                                                                 # against its floor (what CI runs)

Each recipe runs as a user would run it (`mmx-train recipe=<name>`, from the repository root, so the
generated data lands in data/ and the run in outputs/). `mmx-train` writes results.json into its run
folder; the table between the README's `<!-- results:begin -->` and `<!-- results:end -->` lines is
rebuilt from those files with the date, the commit and the machine, so that every number in it comes
from a run of the code it describes. A score below the recipe's floor fails the command: the floors are
set well under every measured run (see the recipes' READMEs), so a failure means the recipe stopped
learning, not noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# recipe -> (the result key of results.json that is held to a floor, the floor, what the table shows)
QUICKSTARTS = {
    "translation/quickstart": ("test_bleu", 90.0, ("test_bleu",)),
    "speech_translation/quickstart": ("test_bleu", 80.0, ("test_bleu",)),
    "captioning/quickstart": ("test_cider", 300.0, ("test_cider", "test_bleu")),
    "multimodal/quickstart": ("test_bleu", 85.0, ("test_bleu",)),
}
LABELS = {"test_bleu": "test BLEU", "test_cider": "test CIDEr-D"}


def newest_results(recipe: str, *, required: bool = True) -> dict | None:
    """results.json of the newest finished run of `recipe` under outputs/."""
    runs = [json.loads(p.read_text()) for p in (REPO / "outputs").glob("*/*/results.json")]
    runs = [r for r in runs if r.get("recipe") == recipe]
    if not runs and required:
        raise SystemExit(f"reproduce: no finished run of {recipe} under {REPO / 'outputs'} (results.json)")
    return max(runs, key=lambda r: r["finished"]) if runs else None


def check(recipe: str, results: dict) -> bool:
    key, floor, _ = QUICKSTARTS[recipe]
    value = results.get(key)
    ok = value is not None and value >= floor
    print(f"{recipe}: {LABELS.get(key, key)} {value} {'≥' if ok else 'below the floor'} {floor} "
          f"({results['output_dir']})")
    return ok


def run(recipe: str) -> dict:
    print(f"+ mmx-train recipe={recipe}", flush=True)
    subprocess.run(["mmx-train", f"recipe={recipe}"], cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return newest_results(recipe)


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + ("+uncommitted changes" if dirty else "")


def table(results: dict[str, dict]) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [f"Measured by `python recipes/reproduce.py` on {date.today().isoformat()}, commit {commit()}, "
             f"{os.cpu_count()} CPU cores ({cpu}), torch threads as configured:", "",
             "| recipe | result | wall time |", "| --- | --- | ---: |"]
    for recipe, r in results.items():
        shown = ", ".join(f"{LABELS.get(k, k)} **{r[k]:.2f}**" for k in QUICKSTARTS[recipe][2] if k in r)
        minutes, seconds = divmod(round(r["wall_seconds"]), 60)
        lines.append(f"| `{recipe}` | {shown} | {minutes} min {seconds:02d} s |")
    return "\n".join(lines)


def rewrite_readme(results: dict[str, dict]) -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table(results) + "\n" + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help=f"quickstarts to run (default: all): {', '.join(QUICKSTARTS)}")
    parser.add_argument("--check", action="store_true", help="check the newest runs against their floors, no training")
    args = parser.parse_args(argv)
    unknown = [r for r in args.recipes if r not in QUICKSTARTS]
    if unknown:
        parser.error(f"not a quickstart: {', '.join(unknown)}; choose from {', '.join(QUICKSTARTS)}")
    recipes = args.recipes or list(QUICKSTARTS)
    results = {recipe: newest_results(recipe) if args.check else run(recipe) for recipe in recipes}
    if not args.check:  # the table keeps the newest run of every quickstart, rerun now or earlier
        rows = {r: results.get(r) or newest_results(r, required=False) for r in QUICKSTARTS}
        rewrite_readme({r: row for r, row in rows.items() if row})
    if not all([check(recipe, r) for recipe, r in results.items()]):
        sys.exit(1)


if __name__ == "__main__":
    main()
