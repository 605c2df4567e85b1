"""`npy_manifest`: a data format of this plugin (`data.format=npy_manifest`), one TSV manifest per split.

    {data.root}/train.tsv                     (data.train=train; likewise data.valid, data.test)
    id      features            text
    s001    feats/s001.npy      red blue red
    s002    feats/s002.npy      gold gold green

Tab-separated, with a header naming the columns (any order; extra columns are ignored). `features` is
the path of a `.npy` file [frames, features] (the `npy_features` encoder reads it), relative to the
manifest's folder or absolute; `text` is the target. `id` is optional: it names a row in `mmx-generate`'s
output (the row's file:line otherwise).

The entry point registers `npy_manifest` (a `DataFormat`) with `manifest=".tsv"`: `mmx-generate RUN
file.tsv` then reads such a file with this same reader, as split "generate" with `data.for_generation`
true, where the `text` column may be missing or empty. Every problem names the manifest's file:line; with
`data.skip_invalid=true` a bad row is dropped and counted instead (`skipped.add(reason, where)`).

`guess_npy_manifest` lets `mmx-data DIR` recognise such a folder and print the overrides that train on it,
`encoder.feature_dim` read from the first .npy file's header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmxattn.plugin import ConfigError, DataError, DataFormat, Guess, Sample, SkipReport, read_lines, splits_of

FEATURES, TEXT, ID = "features", "text", "id"
HEADER = f"{ID}\\t{FEATURES}\\t{TEXT}"
UNDECODABLE = "not valid UTF-8"  # the skip reason of a line that read_lines could not decode
SKIP_HINT = ", or set data.skip_invalid=true to skip such rows (they are counted and reported)"


def manifest_path(root: Path, split: str, name: str) -> Path:
    path = root / (name if name.endswith(".tsv") else f"{name}.tsv")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, but the manifest of data.{split} (a .tsv file) is expected there")
    if not path.is_file():
        present = sorted(p.name for p in root.glob("*.tsv"))[:12] if root.is_dir() else []
        where = ("manifests present: " + ", ".join(present)) if present else (
            "no .tsv files there" if root.is_dir() else "the folder does not exist")
        raise DataError(f"{path}: manifest not found for data.{split}={name} ({where}). data.root={root} must hold "
                        f"one TSV per split; name them with data.train / data.valid / data.test (without .tsv)")
    return path


def read_npy_manifest(data_cfg, split: str, skipped: SkipReport) -> list[Sample]:
    """The samples of split `split`: sources {"src": path of the .npy file}, target the `text` column."""
    name = data_cfg.get(split)
    if not name:
        raise ConfigError(f"data.{split} is not set; name the split's manifest (data.{split}=<file without .tsv>)")
    manifest = manifest_path(Path(data_cfg.root), split, str(name))
    skip = bool(data_cfg.get("skip_invalid", False))
    need_target = not data_cfg.get("for_generation", False)  # mmx-generate reads manifests without targets

    lines = read_lines(manifest, keep_invalid=skip, hint=SKIP_HINT)
    if not lines or lines[0] is None or not lines[0].strip():
        why = "is empty" if not lines else f"has {'an undecodable' if lines[0] is None else 'an empty'} first line"
        raise DataError(f"{manifest}:1: the manifest {why}; it must start with the header `{HEADER}` (tab-separated)")
    header = [c.strip() for c in lines[0].split("\t")]
    required = (FEATURES, TEXT) if need_target else (FEATURES,)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{manifest}:1: the header lacks column(s) {', '.join(missing)}; it has "
                        f"{', '.join(header)}. An npy_manifest starts with `{HEADER}` (tab-separated)")
    column = {c: header.index(c) for c in (ID, FEATURES, TEXT) if c in header}

    samples = []
    for number, line in enumerate(lines[1:], 2):
        if line is not None and not line.strip():
            continue
        where = f"{manifest}:{number}"
        fields = line.split("\t") if line is not None else []
        reason = problem = None
        if line is None:  # only with skip_invalid: read_lines raised otherwise
            reason = problem = UNDECODABLE
        elif len(fields) > len(header) or (
                len(fields) < len(header) and (need_target or column[FEATURES] >= len(fields))):
            # (for generation, trailing columns after `features` may be left off: a row without its text)
            reason, problem = "malformed row", f"{len(fields)} tab-separated fields, but the header has {len(header)}"
        else:
            fields += [""] * (len(header) - len(fields))
            file, target = fields[column[FEATURES]].strip(), fields[column[TEXT]].strip() if TEXT in column else ""
            path = Path(file) if Path(file).is_absolute() else manifest.parent / file
            if not file:
                reason, problem = "malformed row", "the features column is empty"
            elif path.is_dir():
                reason, problem = "features path is a folder", f"features path {path} is a folder, not a .npy file"
            elif not path.is_file():
                reason = "missing features"
                problem = f"feature file {path} not found (relative paths start at {manifest.parent})"
            elif not target and need_target:
                reason, problem = "empty target", "the text column is empty"
        if problem is not None:
            if not skip:
                raise DataError(f"{where}: {problem}. Fix the row, or set data.skip_invalid=true to drop bad rows "
                                "(the number dropped is reported)")
            skipped.add(reason, where)
            continue
        sample_id = fields[column[ID]].strip() if ID in column else ""
        samples.append(Sample({"src": str(path)}, target, where, id=sample_id or None))
    if not samples:
        rows = sum(1 for line in lines[1:] if line is None or line.strip())
        why = f"all {rows} rows were invalid and {skipped.summary('rows so far')}" if rows else "it has no rows"
        raise DataError(f"{manifest}: no usable rows in data.{split} ({why}); check data.root and data.{split}")
    return samples


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [c.strip() for c in f.readline().rstrip("\r\n").split("\t")]


def guess_npy_manifest(root: Path) -> Guess | None:
    """`mmx-data DIR`: a folder of manifests whose header has `features` and `text` columns is ours."""
    ours = [p.stem for p in sorted(root.glob("*.tsv")) if {FEATURES, TEXT} <= set(_header(p))]
    splits = splits_of(ours)
    if "train" not in splits:
        return None
    overrides = ["recipe=npy_features_base", f"data.root={root}"] + [f"data.{k}={v}" for k, v in splits.items()]
    notes = []
    if "valid" not in splits:
        overrides.append("data.valid=null")
    manifest = root / f"{splits['train']}.tsv"
    header = _header(manifest)
    with open(manifest, encoding="utf-8", errors="replace") as f:
        rows = [line.rstrip("\r\n").split("\t") for line in f.readlines()[1:2]]
    if rows and len(rows[0]) > header.index(FEATURES):
        file = Path(rows[0][header.index(FEATURES)].strip())
        try:  # the header only: mmap_mode reads no frames
            shape = np.load(file if file.is_absolute() else root / file, mmap_mode="r").shape
            overrides.append(f"encoder.feature_dim={shape[-1]}")
        except (OSError, ValueError, IndexError) as e:
            notes.append(f"could not read {file} for encoder.feature_dim ({e}); set encoder.feature_dim=F")
    return Guess("npy_manifest manifests (.npy features per row)", overrides, notes)


# the object the entry point names; tried before mmxattn's own multisource_tsv guess (order 20), which
# would take any TSV with a header
npy_manifest = DataFormat(read_npy_manifest, manifest=".tsv", guess=guess_npy_manifest, guess_order=15)
