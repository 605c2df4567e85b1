"""Several sources per sample: `{root}/{split}.tsv`, one sample per row, one column per source.

    id       src                               image                 tgt
    train-0  The old bat sees two cats.        images/train/0.png    Lo nokto veko du mizui vidas.
    train-1  A crane finds the river.                                Una grua lo flumo trovas.

The header names the columns (any order). Every column other than `id` and the target column
(`data.target_column`) is a source, named by its header: a model with `encoders: {src: ..., image: ...}`
reads the columns `src` and `image`, and ignores the others. An empty cell means the sample lacks that
source (train-1 has no picture); the model then reads its other sources only. Columns listed in
`data.path_columns` hold file paths, absolute or relative to `data.root`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .samples import INVALID_UTF8, SKIP_HINT, Sample, SkipReport, check_not_folder, no_samples, read_lines

ID_COLUMN = "id"


def read_multisource_tsv(data_cfg, split: str, skipped: SkipReport) -> list[Sample]:
    root = Path(data_cfg.root)
    name = data_cfg[split]
    path = root / (name if name.endswith(".tsv") else f"{name}.tsv")
    check_not_folder(path, "a tab-separated file (.tsv)", f"data.{split} names the split's file (without .tsv)")
    if not path.is_file():
        present = sorted(p.name for p in root.glob("*.tsv"))[:12] if root.is_dir() else []
        raise DataError(
            f"{path}: file not found. data.root={root} must hold it "
            f"({'present: ' + ', '.join(present) if present else 'no .tsv files there'}); "
            f"data.{split} names the split's file (without .tsv)."
        )
    skip = bool(data_cfg.skip_invalid)
    lines = read_lines(path, keep_invalid=skip, hint=SKIP_HINT)
    if not lines:
        raise DataError(f"{path}: empty file; the first line must name the columns (id, sources..., target)")
    if lines[0] is None:
        raise DataError(f"{path}:1: the header is {INVALID_UTF8}; re-encode the file as UTF-8")
    header = lines[0].split("\t")
    target_column = data_cfg.get("target_column", "tgt")
    need_target = not data_cfg.get("for_generation", False)  # mmx-generate reads manifests without targets
    path_columns = list(data_cfg.get("path_columns") or [])
    for column in [target_column, *path_columns] if need_target else path_columns:
        if column not in header:
            key = "data.target_column" if column == target_column else "data.path_columns"
            raise DataError(f"{path}:1: no column '{column}' ({key}); the header has {', '.join(header)}")
    source_columns = [c for c in header if c not in (ID_COLUMN, target_column)]
    if not source_columns:
        raise DataError(f"{path}:1: no source column; the header has only {', '.join(header)}")

    samples = []
    for number, line in enumerate(lines[1:], 2):
        where = f"{path}:{number}"
        if line is None:  # only with skip_invalid: read_lines raised otherwise
            skipped.add(INVALID_UTF8, where)
            continue
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataError(f"{where}: {len(cells)} tab-separated fields, but the header has {len(header)} ({', '.join(header)})")
        row = dict(zip(header, cells))
        target = row.get(target_column, "").strip()
        if not target and need_target:
            if not skip:
                raise DataError(f"{where}: empty target. Fix the row, or set data.skip_invalid=true to drop such rows.")
            skipped.add("empty target", where)
            continue
        sources = {}
        for column in source_columns:
            value = row[column].strip()
            if not value:
                continue  # this sample lacks the source
            if column in path_columns and not Path(value).is_absolute():
                value = str(root / value)
            sources[column] = value
        samples.append(Sample(sources, target, where, id=row.get(ID_COLUMN)))
    if not samples:
        rows = sum(1 for line in lines[1:] if line is None or line.strip())
        raise no_samples(split, str(path), "rows", rows, skipped)
    return samples
