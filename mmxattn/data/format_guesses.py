"""How `mmx-data DIR` recognises the built-in data formats (`DataFormat.guess`, wired in formats.py).

Each guess looks at file names and the first bytes of files only, and returns the `mmx-train` overrides
that select its format for the folder, with notes on what it chose and what it left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from .guess import (Guess, default_text_encoder, find_folder, first_rows, peek, reader_of, readers_by_suffix,
                    splits_of, tsv_header)


def _manifests(root: Path) -> dict[str, list[str]]:
    """{name: header} of the folder's .tsv files."""
    return {p.stem: tsv_header(p) for p in sorted(root.glob("*.tsv"))}


def guess_speech_tsv(root: Path) -> Guess | None:
    """fairseq speech-to-text manifests: .tsv files with `audio` and `n_frames` columns."""
    manifests = _manifests(root)
    speech = [name for name, header in manifests.items() if {"audio", "n_frames"} <= set(header)]
    if not speech:
        return None
    splits = splits_of(speech)
    if "train" not in splits:
        raise ConfigError(f"{root}: speech manifests ({', '.join(n + '.tsv' for n in speech)}) but none for training "
                          "(a name with 'train'); name them: mmx-data data=speech_tsv data.root=DIR data.train=NAME ...")
    overrides = ["data=speech_tsv", f"data.root={root}"] + [f"data.{k}={v}" for k, v in splits.items()]
    notes = []
    header = manifests[splits["train"]]
    values = [r[header.index("audio")] for r in first_rows(root / f"{splits['train']}.tsv") if len(r) == len(header)]
    by_suffix = readers_by_suffix()
    # fairseq's prepared features (.zip of .npy, .npy) have no audio suffix: the plugin reading .wav reads them
    encoder = reader_of(values, by_suffix) or by_suffix.get(".wav")
    if encoder:
        overrides.insert(1, f"encoder={encoder}")
    else:
        notes.append("no installed encoder reads these audio files (mmx-encoders lists them); choose one: encoder=NAME")
    if "valid" not in splits:
        overrides.append("data.valid=null")
        notes.append("no validation manifest found (a name with dev or val)")
    unused = sorted(set(speech) - set(splits.values()))
    if unused:
        notes.append(f"other manifests, not used: {', '.join(n + '.tsv' for n in unused)}")
    return Guess("fairseq speech-to-text manifests", overrides, notes)


def _column_encoders(root: Path, header: list[str], rows: list[list[str]], default_text: str) -> dict[str, str]:
    """{column: encoder name}: each column whose values are file names goes to the plugin that reads files
    with that suffix (`file_extensions`), the others to the default text encoder."""
    by_suffix = readers_by_suffix()
    chosen = {}
    for index, column in enumerate(header):
        values = [r[index].strip() for r in rows if len(r) == len(header) and r[index].strip()]
        files = values and all((Path(v) if Path(v).is_absolute() else root / v).is_file() for v in values[:5])
        reader = reader_of(values, by_suffix)
        chosen[column] = reader if (reader and files) else default_text
    return chosen


def guess_multisource_tsv(root: Path) -> Guess | None:
    """Any .tsv with a header of two or more columns: one column per source, one target column."""
    tables = {name: header for name, header in _manifests(root).items() if len(header) >= 2}
    splits = splits_of(list(tables))
    if "train" not in splits:
        return None
    header = tables[splits["train"]]
    target = next((c for c in ("tgt", "target", "tgt_text") if c in header), header[-1])
    sources = [c for c in header if c not in ("id", target)]
    if not sources:
        return None
    default_text = default_text_encoder()
    encoders = _column_encoders(root, header, first_rows(root / f"{splits['train']}.tsv"), default_text)
    overrides = ["data=multisource_tsv", f"data.root={root}"] + [f"data.{k}={v}" for k, v in splits.items()]
    if "valid" not in splits:
        overrides.append("data.valid=null")
    if target != "tgt":
        overrides.append(f"data.target_column={target}")
    paths = [c for c in sources if encoders[c] != default_text]
    if paths:
        overrides.append(f"data.path_columns=[{','.join(paths)}]")
    if sources != ["src"] or paths:  # one text column `src` is what the default `encoder` reads
        overrides += ["~encoder"] + [f"+encoder@encoders.{c}={encoders[c]}" for c in sources]
    notes = [f"sources: {', '.join(f'{c} ({encoders[c]})' for c in sources)}; target column: {target}"]
    return Guess("tab-separated samples with a header (one column per source)", overrides, notes)


def _json_heads(root: Path, *needles: str) -> list[tuple[Path, str]]:
    """(path, first bytes) of the .json files in root and its subfolders whose first bytes hold every needle."""
    found = []
    for path in sorted(root.glob("*.json")) + sorted(root.glob("*/*.json")):
        head = peek(path)
        if all(n in head for n in needles):
            found.append((path, head))
    return found


KARPATHY = ('"images"', '"sentences"', '"filename"')


def guess_karpathy(root: Path) -> Guess | None:
    """Karpathy's split files (dataset_coco.json, dataset_flickr8k.json, ...): images with sentences and splits."""
    files = _json_heads(root, *KARPATHY)
    if not files:
        return None
    path, head = files[0]
    overrides = ["data=karpathy", f"data.root={root}", f"data.annotations={path.relative_to(root)}"]
    filename = re.search(r'"filename"\s*:\s*"([^"]+)"', head)
    encoder = reader_of(re.findall(r'"filename"\s*:\s*"([^"]+)"', head)[:20])
    if encoder:
        overrides.insert(1, f"encoder={encoder}")
    filepath = re.search(r'"filepath"\s*:\s*"([^"]*)"', head)
    notes = []
    if filename:
        relative = str(Path(filepath.group(1) if filepath else "") / filename.group(1))
        folder = find_folder(root, relative)
        if folder is None:
            notes.append(f"image {relative} not found under {root} or its subfolders; set data.images=FOLDER")
        elif folder != ".":
            overrides.append(f"data.images={folder}")
    splits = set(re.findall(r'"split"\s*:\s*"([^"]+)"', head))
    if splits and "restval" not in splits:
        overrides.append("data.train=[train]")
    return Guess(f"Karpathy split file ({path.name})", overrides, notes)


def guess_coco(root: Path) -> Guess | None:
    """COCO captions JSON (captions_train2017.json, ...) with an image folder per split."""
    coco = [c for c in _json_heads(root, '"images"', '"file_name"') if not all(n in c[1] for n in KARPATHY)]
    if not coco:
        return None
    captions = [c for c in coco if "caption" in c[0].name.lower()] or coco
    by_name = {str(p.relative_to(root)): head for p, head in captions}
    splits = splits_of(list(by_name))
    if "train" not in splits:
        return None
    overrides = ["data=coco", f"data.root={root}"] + [f"data.{k}={v}" for k, v in splits.items()]
    if "valid" not in splits:
        overrides.append("data.valid=null")
    notes = []
    encoder = reader_of(re.findall(r'"file_name"\s*:\s*"([^"]+)"', by_name[splits["train"]])[:20])
    if encoder:
        overrides.insert(1, f"encoder={encoder}")
    else:
        notes.append("no installed encoder reads these image files (mmx-encoders lists them); choose one: encoder=NAME")
    for split, name in splits.items():
        found = re.search(r'"file_name"\s*:\s*"([^"]+)"', by_name[name])
        if not found:
            continue
        folder = find_folder(root, found.group(1))
        if folder is None:
            notes.append(f"image {found.group(1)} of {name} not found under {root}; set data.images.{split}=FOLDER")
        else:
            overrides.append(f"data.images.{split}={folder}")
    return Guess("COCO captions JSON", overrides, notes)


LANGUAGE = re.compile(r"^(?P<prefix>.+?)\.(?P<lang>[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,4})?|src|tgt|source|target)(?:\.gz)?$")
NOT_LANGUAGES = {"txt", "tsv", "csv", "json", "jsonl", "md", "py", "yaml", "yml", "jpg", "png", "wav", "flac",
                 "mp3", "ogg", "zip", "npy", "npz", "tar", "model", "vocab", "log", "bpe", "tok", "sh", "html",
                 "xml", "sgm", "pt", "ckpt", "lock", "gz", "bz2", "xz"}
SOURCE_LIKE = ("src", "source")


def guess_parallel_text(root: Path) -> Guess | None:
    """Line-aligned files named <split>.<language>[.gz] (train.en, train.de.gz, ...)."""
    languages: dict[str, set[str]] = {}
    for path in root.iterdir():
        found = LANGUAGE.match(path.name)
        if path.is_file() and found and found["lang"].lower() not in NOT_LANGUAGES:
            languages.setdefault(found["prefix"], set()).add(found["lang"])
    prefixes = [p for p, langs in languages.items() if len(langs) >= 2]
    splits = splits_of(prefixes)
    if "train" not in splits:
        return None
    common = set(languages[splits["train"]])
    for split in ("valid", "test"):
        if split in splits and len(common & languages[splits[split]]) >= 2:
            common &= languages[splits[split]]
        elif split in splits:
            del splits[split]
    ordered = sorted(common)
    source = next((lang for lang in ("en", *SOURCE_LIKE) if lang in common), ordered[0])
    target = next((lang for lang in ("tgt", "target") if lang in common and lang != source),
                  next(lang for lang in ordered if lang != source))
    overrides = ["data=parallel_text", f"data.root={root}", f"data.src_lang={source}", f"data.tgt_lang={target}"]
    overrides += [f"data.{k}={v}" for k, v in splits.items()]
    if "valid" not in splits:
        overrides.append("data.valid=null")
    notes = []
    if len(common) > 2:
        notes.append(f"languages in every split: {', '.join(ordered)}; chose {source} -> {target} "
                     "(pick another pair with data.src_lang=... data.tgt_lang=...)")
    else:
        notes.append(f"languages: {source} -> {target} (swap with data.src_lang={target} data.tgt_lang={source})")
    unused = sorted(set(prefixes) - set(splits.values()))
    if unused:
        notes.append(f"other file sets, not used: {', '.join(unused)} (data.test=NAME scores one at the end)")
    return Guess("line-aligned parallel text", overrides, notes)
