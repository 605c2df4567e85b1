"""fairseq speech-to-text TSV manifests: `{root}/{split}.tsv`, one utterance per row.

    id    audio                    n_frames  tgt_text                 [src_text  speaker ...]
    utt1  clips/utt1.wav           512       Das ist ein Beispiel.
    utt2  fbank80.zip:4139:164608  1024      Noch eins.

The header names the columns (any order; extra ones are ignored). `audio` is a path, absolute or relative
to `data.audio_root` (default: the manifest's folder), optionally in fairseq's `file:OFFSET:LENGTH` form
(a slice of a long recording, or an entry of an uncompressed zip). `n_frames` counts 10 ms feature frames
(what fairseq's prep scripts write for 80-bin filterbanks); it sizes batches without opening any audio.
`data.target_column` picks the target: `tgt_text` for translation, `src_text` to train recognition.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .samples import Sample, SkipReport, read_lines

REQUIRED_COLUMNS = ("id", "audio", "n_frames", "tgt_text")


class AudioPath(str):
    """A manifest's audio path that also carries its `n_frames`, so the processor can size it unopened."""

    n_frames: int | None

    def __new__(cls, path: str, n_frames: int | None = None):
        obj = super().__new__(cls, path)
        obj.n_frames = n_frames
        return obj

    def __reduce__(self):  # survive pickling into DataLoader workers (spawn) with n_frames intact
        return (AudioPath, (str(self), self.n_frames))


def split_fairseq_path(audio: str) -> tuple[str, int | None, int | None]:
    """'file:OFFSET:LENGTH' -> (file, OFFSET, LENGTH); a plain path -> (path, None, None)."""
    parts = audio.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], int(parts[1]), int(parts[2])
    return audio, None, None


def resolve_audio(value: str, root: Path) -> tuple[Path, str]:
    """A manifest's audio value -> (the file it reads, the value with that file made absolute).

    Relative files start at `root`; fairseq's `file:OFFSET:LENGTH` keeps its slice.
    """
    file, offset, length = split_fairseq_path(value)
    path = Path(file) if Path(file).is_absolute() else root / file
    return path, str(path) + ("" if offset is None else f":{offset}:{length}")


def manifest_path(root: Path, name: str) -> Path:
    path = root / (name if name.endswith(".tsv") else f"{name}.tsv")
    if not path.is_file():
        present = sorted(p.name for p in root.glob("*.tsv"))[:12] if root.is_dir() else []
        raise DataError(
            f"{path}: manifest not found. data.root={root} must hold it "
            f"({'manifests present: ' + ', '.join(present) if present else 'no .tsv files there'}); "
            "name the split's manifest with data.train / data.valid / data.test (without .tsv)."
        )
    return path


def read_speech_tsv(data_cfg, split: str, skipped: SkipReport) -> list[Sample]:
    """Samples of split `data_cfg[split]` with sources {"src": AudioPath} and the target column's text."""
    root = Path(data_cfg.root)
    manifest = manifest_path(root, str(data_cfg[split]))
    audio_root = Path(data_cfg.get("audio_root") or manifest.parent)
    target_column = data_cfg.get("target_column") or "tgt_text"
    skip = bool(data_cfg.get("skip_invalid", False))

    lines = read_lines(manifest)
    if not lines:
        raise DataError(f"{manifest}: empty manifest; expected a header line `id\\taudio\\tn_frames\\ttgt_text`")
    header = lines[0].split("\t")
    missing = [c for c in (*REQUIRED_COLUMNS, target_column) if c not in header]
    if missing:
        raise DataError(
            f"{manifest}:1: the header lacks column(s) {', '.join(dict.fromkeys(missing))}; it has "
            f"{', '.join(header) or 'nothing'}. A fairseq speech-to-text manifest is tab-separated and starts with "
            "`id  audio  n_frames  tgt_text` (optional `src_text`, `speaker`)."
        )
    column = {name: header.index(name) for name in (*REQUIRED_COLUMNS, target_column)}

    exists: dict[Path, bool] = {}  # one zip serves many rows: stat it once
    samples = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        fields = line.split("\t")
        reason, problem = None, None
        if len(fields) != len(header):
            reason, problem = "malformed row", f"{len(fields)} tab-separated fields, but the header has {len(header)}"
        else:
            n_frames, audio = fields[column["n_frames"]].strip(), fields[column["audio"]].strip()
            target = fields[column[target_column]].strip()
            if not (n_frames.isdigit() and int(n_frames) > 0):
                reason, problem = "malformed row", f"n_frames={n_frames!r} is not a positive integer"
            elif not audio:
                reason, problem = "malformed row", "the audio column is empty"
            elif not target:
                reason, problem = "empty target", f"empty {target_column}"
            else:
                file_path, resolved = resolve_audio(audio, audio_root)
                if file_path not in exists:
                    exists[file_path] = file_path.is_file()
                if not exists[file_path]:
                    reason, problem = "missing audio", f"audio file {file_path} not found"
        if problem is not None:
            if not skip:
                raise DataError(
                    f"{where}: {problem}. Fix the row, or set data.skip_invalid=true to drop bad rows "
                    "(the number dropped is reported)."
                )
            skipped.add(reason, where)
            continue
        samples.append(Sample({"src": AudioPath(resolved, int(n_frames))}, target, where))
    if not samples:
        raise DataError(f"{manifest}: no usable rows")
    return samples
