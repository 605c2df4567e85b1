"""`mmx-data`: look at a data set before training on it.

    mmx-data /path/to/corpus                                   # guess the format from the folder
    mmx-data recipe=translation/base data.root=DIR [key=value ...]   # exactly what mmx-train would read

It composes the real `mmx-train` config (Hydra's compose API, installed plugins' configs included) and hands
it to `mmxattn.data.report.analyse`, which reads every split with the readers training uses and prints what
to know before training, with the `data.max_len` / `data.max_tokens` it suggests as overrides to paste into
mmx-train. A folder alone has its format guessed by the installed data formats (`mmxattn.data.guess`). No
encoder runs and no model is built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import hydra_search
from ..config_checks import check_config
from ..data.guess import guess_format
from ..data.report import analyse
from ..errors import ConfigError
from ..sources import encoder_configs
from .common import user_errors_exit

EPILOG = """examples:
  mmx-data data/multi30k                       # guess the format; prints the overrides that select it
  mmx-data data/multi30k data.tgt_lang=fr      # guess, then change what the guess chose
  mmx-data recipe=translation/base data.root=data/multi30k data.src_lang=en data.tgt_lang=de
  mmx-data data=speech_tsv data.root=/data/mustc/en-de data.train=train_st data.valid=dev_st
  mmx-data data=coco data.root=/data/coco data.skip_invalid=true   # count bad entries instead of stopping

The config is composed exactly as mmx-train composes it (same recipes, groups, installed plugins), and
the splits are read by the same readers: an error here is the error training would give. Folders it
recognises: *.tsv manifests with an `audio` column (speech_tsv), other *.tsv with a header (multisource_tsv),
COCO captions JSON (coco), dataset_*.json Karpathy split files (karpathy), line-aligned train.xx / train.yy
files, optionally .gz (parallel_text), and the formats installed plugins recognise."""


def compose_config(overrides: list[str]):
    """(the config `mmx-train <overrides>` composes, the overrides it composes from, whether the quickstart
    recipe was added): same root config, groups, recipes, plugin configs and checks as mmx-train."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .train import check_recipe_argument, with_default_recipe

    hydra_search.register()  # installed plugins' configs, as mmx-train
    given = list(overrides)
    overrides = check_recipe_argument(with_default_recipe(given))
    try:
        with initialize_config_module(hydra_search.BUILTIN_CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"cannot compose the config from {' '.join(overrides)}: {e}") from e
    check_config(cfg)  # the config errors training would stop at first (data.root unset, values out of range)
    return cfg, overrides, len(overrides) > len(given)  # True: mmx-train would add recipe=translation/quickstart


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mmx-data", description="Read a data set as mmx-train would, and print what to know before training: "
        "sizes, lengths, durations, sample rates, image sizes, overlong and skipped samples, vocabulary, and the "
        "batch budget it suggests.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", metavar="DIR | key=value",
                        help="a data folder (its format is guessed) and/or mmx-train config overrides")
    parser.add_argument("--max-files", type=int, default=2000,
                        help="audio / image headers read per source and split, a random sample (default 2000)")
    parser.add_argument("--tokenizer-samples", type=int, default=200_000,
                        help="train the tokenizer on at most this many training samples (default 200000)")
    parser.add_argument("--top", type=int, default=12, help="most frequent target words shown (default 12)")
    parser.add_argument("--examples", type=int, default=5, help="overlong samples named per split (default 5)")
    args = parser.parse_args(argv)
    if not args.args:
        parser.error("give a data folder (mmx-data DIR) or the config (mmx-data data=<format> data.root=DIR ...)")
    return args


@user_errors_exit
def main(argv=None) -> None:
    args = parse_args(argv)
    folders = [a for a in args.args if "=" not in a and not a.startswith(("~", "+"))]
    overrides = [a for a in args.args if a not in folders]
    if len(folders) > 1:
        raise ConfigError(f"one data folder at a time; got {', '.join(folders)} (overrides are written key=value)")
    guess = None
    if folders:
        root = Path(folders[0])
        if any(o.lstrip("+").split("=", 1)[0] in ("recipe", "data", "data.format") for o in overrides):
            overrides = [f"data.root={root}", *overrides]  # the user chose the format: the folder is data.root
        else:
            guess = guess_format(root)
            overrides = [*guess.overrides, *overrides]
    cfg, used, quickstart = compose_config(overrides)
    print(f"mmx-data: {cfg.data.format} data under data.root={cfg.data.root}")
    if guess is not None:
        print(f"format guessed: {guess.what}")
        for note in guess.notes:
            print(f"  {note}")
        print(f"  the same data for training: mmx-train {' '.join(_quote(o) for o in guess.overrides)}")
    elif quickstart:
        print("(no recipe, data or encoder given: recipe=translation/quickstart, as a bare mmx-train)")
    sources = ", ".join(f"{s}={c['name']}" for s, c in encoder_configs(cfg).items())
    if guess is None or used != guess.overrides:
        print(f"config: {' '.join(_quote(o) for o in used)}")
    print(f"  encoders: {sources}; "
          f"data.max_len={cfg.data.max_len}, data.max_tokens={cfg.data.max_tokens}, "
          f"data.skip_invalid={str(bool(cfg.data.skip_invalid)).lower()}")
    print()
    lines, suggestions = analyse(cfg, max_files=args.max_files, tokenizer_samples=args.tokenizer_samples,
                                 top=args.top, examples=args.examples)
    print("\n".join(lines))
    print()
    if suggestions:
        print("suggested overrides (add them to the mmx-train command):")
        print("  " + " ".join(suggestions))
    else:
        print("suggested overrides: none, the config suits this data")
    sys.stdout.flush()


def _quote(override: str) -> str:
    return f"'{override}'" if override.startswith("~") or any(c in override for c in " []{}*?$'\"") else override


if __name__ == "__main__":
    main()
