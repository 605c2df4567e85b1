"""`mmx-data DIR`: which data format a folder holds, as the overrides that select it.

Each data format may bring a `guess(root) -> Guess | None` (`mmxattn.registry.DataFormat`); `guess_format`
asks the installed formats in their `guess_order` and takes the first answer, so a plugin's format is
recognised exactly like a built-in one (mmxattn/data/format_guesses.py holds the built-in guesses). The
helpers below read only names and the first bytes of files, so guessing a large corpus is instant.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import hydra_search, registry
from ..errors import ConfigError, DataError
from .speech import split_fairseq_path


@dataclass
class Guess:
    """A guessed data format: the overrides that select it, and what the guess noticed."""

    what: str
    overrides: list[str]
    notes: list[str] = field(default_factory=list)


def guess_format(root: Path) -> Guess:
    """The overrides that select `root`'s data format, from its file names and the first bytes of its files."""
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'folder not found'}; give the folder that "
                        "holds the data set, or compose the config: mmx-data data=<format> data.root=DIR")
    with warnings.catch_warnings():  # a broken plugin is named when it is selected, not while guessing
        warnings.simplefilter("ignore")
        formats, _ = registry.DATA_FORMATS.load_all()
    guessers = sorted((fmt.guess_order, name, fmt.guess) for name, fmt in formats.items() if fmt.guess is not None)
    for _, _, guess in guessers:
        found = guess(root)
        if found is not None:
            return found
    names = sorted(p.name for p in root.iterdir())
    raise ConfigError(
        f"{root}: cannot tell the data format from its files ({', '.join(names[:12]) or 'none'}"
        f"{', ...' if len(names) > 12 else ''}). Name it: mmx-data data=<format> data.root={root} ... (formats: "
        f"{', '.join(available_formats())}; their files are described in conf/data/<format>.yaml)"
    )


def available_formats() -> list[str]:
    """The `data=<format>` config options of mmxattn and of installed plugins."""
    from importlib import resources

    modules = [hydra_search.BUILTIN_CONFIG_PACKAGE] + [c.module for c in hydra_search.config_packages()[0]]
    names = set()
    for module in modules:
        folder = resources.files(module) / "data"
        if folder.is_dir():
            names.update(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
    return sorted(names)


# ---------------------------------------------------------------------------------------------------
# Helpers for guesses: file heads, split names, and which encoder reads a column of file names


def peek(path: Path, size: int = 1 << 21) -> str:
    """The first `size` bytes of a file as text (undecodable bytes replaced)."""
    with open(path, "rb") as f:
        return f.read(size).decode("utf-8", errors="replace")


def tsv_header(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            return f.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    except OSError:
        return []


def first_rows(path: Path, n: int = 20) -> list[list[str]]:
    """The first n rows after the header of a TSV file, split into fields."""
    rows = []
    with open(path, "rb") as f:
        f.readline()
        for raw in f:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line.strip():
                rows.append(line.split("\t"))
            if len(rows) == n:
                break
    return rows


def _pick(names: Sequence[str], exact: Sequence[str], contains: Sequence[str]) -> str | None:
    """The name equal to one of `exact` (in that order), else the shortest containing one of `contains`."""
    for wanted in exact:
        if wanted in names:
            return wanted
    found = sorted((n for n in names if any(c in n.lower() for c in contains)), key=lambda n: (len(n), n))
    return found[0] if found else None


def splits_of(names: Sequence[str]) -> dict[str, str]:
    """{train/valid/test: name} from split names such as train, dev_st, tst-COMMON_st, captions_val2017.json."""
    chosen: dict[str, str] = {}
    train = _pick(names, ("train",), ("train",))
    if train:
        chosen["train"] = train
    rest = [n for n in names if n != train]
    valid = _pick(rest, ("valid", "val", "dev", "validation"), ("valid", "dev", "val"))
    if valid:
        chosen["valid"] = valid
    rest = [n for n in rest if n != valid]
    test = _pick(rest, ("test",), ("test", "tst"))
    if test:
        chosen["test"] = test
    return chosen


def find_folder(root: Path, relative: str) -> str | None:
    """The folder (relative to root, '.' for root itself) under which `relative` is a file: root, then its
    subfolders, then theirs."""
    if (root / relative).is_file():
        return "."
    level = [root]
    for _ in range(2):
        children = []
        for folder in level:
            try:
                children += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        for child in children:
            if (child / relative).is_file():
                return str(child.relative_to(root))
        level = children[:200]
    return None


def readers_by_suffix() -> dict[str, str]:
    """{file suffix: the encoder plugin that reads such files} from the plugins' `file_extensions`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plugins, _ = registry.load_all()
    by_suffix: dict[str, str] = {}
    for name, plugin in sorted(plugins.items()):
        if plugin.input_kind == "path" and hydra_search.find_encoder_config(name):
            for suffix in plugin.file_extensions:
                by_suffix.setdefault(suffix.lower(), name)
    return by_suffix


def file_of(value: str) -> str:
    """The file a source value names: fairseq's `file:OFFSET:LENGTH` slices name `file`."""
    return split_fairseq_path(str(value))[0]


def reader_of(values: Sequence[str], by_suffix: dict[str, str] | None = None) -> str | None:
    """The one encoder plugin that reads files with these values' suffixes, or None."""
    by_suffix = readers_by_suffix() if by_suffix is None else by_suffix
    readers = {by_suffix.get(Path(file_of(v)).suffix.lower()) for v in values}
    return readers.pop() if values and len(readers) == 1 and None not in readers else None


def default_text_encoder() -> str:
    """The encoder `mmx-train` selects by default (conf/train.yaml), for the text columns of a guessed table."""
    from importlib import resources

    import yaml

    text = (resources.files(hydra_search.BUILTIN_CONFIG_PACKAGE) / "train.yaml").read_text(encoding="utf-8")
    for entry in yaml.safe_load(text).get("defaults", []):
        if isinstance(entry, dict) and "encoder" in entry:
            return str(entry["encoder"])
    return "text"
