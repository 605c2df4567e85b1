"""Parallel text: two line-aligned UTF-8 files (optionally .gz), e.g. train.en.gz / train.de.gz."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .samples import INVALID_UTF8, SKIP_HINT, Sample, SkipReport, find_file, no_samples, read_lines


def read_parallel_text(data_cfg, split: str, skipped: SkipReport) -> list[Sample]:
    """Reads `{root}/{prefix}.{src_lang}[.gz]` and `{root}/{prefix}.{tgt_lang}[.gz]`, prefix = data_cfg[split]."""
    root = Path(data_cfg.root)
    prefix = data_cfg[split]
    skip = bool(data_cfg.skip_invalid)
    src_path = find_file(root, f"{prefix}.{data_cfg.src_lang}")
    tgt_path = find_file(root, f"{prefix}.{data_cfg.tgt_lang}")
    # with skip_invalid an undecodable line comes back as None, so that its pair is dropped from both sides
    src_lines, tgt_lines = (read_lines(path, keep_invalid=skip, hint=SKIP_HINT) for path in (src_path, tgt_path))
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; parallel files must be "
            "line-aligned (line N of one translates line N of the other). Re-export them together."
        )
    samples = []
    for number, (src, tgt) in enumerate(zip(src_lines, tgt_lines), 1):
        if src is None or tgt is None:  # only with skip_invalid: read_lines raised otherwise
            skipped.add(INVALID_UTF8, f"{src_path if src is None else tgt_path}:{number}")
            continue
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            where = f"{src_path if not src else tgt_path}:{number}"
            if not skip:
                raise DataError(
                    f"{where}: empty line. Remove the pair from both files, or set data.skip_invalid=true to "
                    "drop empty and overlong pairs (the number dropped is reported)."
                )
            skipped.add("empty", where)
            continue
        samples.append(Sample({"src": src}, tgt, f"{src_path}:{number}"))
    if not samples:
        raise no_samples(split, f"{src_path}, {tgt_path}", "sentence pairs", len(src_lines), skipped)
    return samples
