"""fairseq speech-to-text TSV manifests: `{root}/{split}.tsv`, one utterance per row.

    id    audio                    n_frames  tgt_text                 [src_text  speaker ...]
    utt1  clips/utt1.wav           512       Das ist ein Beispiel.
    utt2  fbank80.zip:4139:164608  1024      Noch eins.

The header names the columns (any order; extra ones are ignored). `audio` is a path, absolute or relative
to `data.audio_root` (default: the manifest's folder), optionally in fairseq's `file:OFFSET:LENGTH` form
(a slice of a long recording, or an entry of an uncompressed zip). `n_frames` sizes batches without
opening every file; mmxattn counts 10 ms feature frames. fairseq writes two conventions: 10 ms frames in
filterbank manifests (fbank80.zip), audio samples in raw-audio manifests (wav2vec-style, `--use-audio-input`).
A few rows' audio headers tell which one a manifest uses; sample counts are converted to frames.
`data.target_column` picks the target: `tgt_text` for translation, `src_text` to train recognition.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import soundfile as sf

from ..errors import DataError
from .samples import INVALID_UTF8, SKIP_HINT, Sample, SkipReport, check_not_folder, no_samples, read_lines

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "audio", "n_frames", "tgt_text")
FRAME_SHIFT_S, FRAME_LENGTH_S = 0.010, 0.025  # Kaldi fbank defaults, as in fairseq
PROBED_ROWS = 5  # rows whose audio header is read to tell which unit the manifest's n_frames counts


def fbank_frames(num_samples: int, sample_rate: int) -> int:
    """How many 25 ms / 10 ms frames Kaldi (snip_edges) computes from num_samples."""
    window, shift = int(sample_rate * FRAME_LENGTH_S), int(sample_rate * FRAME_SHIFT_S)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


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
    check_not_folder(path, "a fairseq speech-to-text manifest (.tsv)")
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
    need_target = not data_cfg.get("for_generation", False)  # mmx-generate reads manifests without targets

    lines = read_lines(manifest, keep_invalid=skip, hint=SKIP_HINT)
    if not lines:
        raise DataError(f"{manifest}: empty manifest; expected a header line `id\\taudio\\tn_frames\\ttgt_text`")
    if lines[0] is None:
        raise DataError(f"{manifest}:1: the header is {INVALID_UTF8}; re-encode the manifest as UTF-8")
    header = lines[0].split("\t")
    required = (*REQUIRED_COLUMNS, target_column) if need_target else ("audio", "n_frames")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{manifest}:1: the header lacks column(s) {', '.join(dict.fromkeys(missing))}; it has "
            f"{', '.join(header) or 'nothing'}. A fairseq speech-to-text manifest is tab-separated and starts with "
            "`id  audio  n_frames  tgt_text` (optional `src_text`, `speaker`)."
        )
    column = {name: header.index(name) for name in (*REQUIRED_COLUMNS, target_column) if name in header}

    kind: dict[Path, str] = {}  # one zip serves many rows: stat it once
    samples = []
    for number, line in enumerate(lines[1:], 2):
        if line is not None and not line.strip():
            continue
        where = f"{manifest}:{number}"
        reason, problem = None, None
        fields = line.split("\t") if line is not None else []
        if line is None:  # only with skip_invalid: read_lines raised otherwise
            reason, problem = INVALID_UTF8, INVALID_UTF8
        elif len(fields) != len(header):
            reason, problem = "malformed row", f"{len(fields)} tab-separated fields, but the header has {len(header)}"
        else:
            n_frames, audio = fields[column["n_frames"]].strip(), fields[column["audio"]].strip()
            target = fields[column[target_column]].strip() if target_column in column else ""
            if not (n_frames.isdigit() and int(n_frames) > 0):
                reason, problem = "malformed row", f"n_frames={n_frames!r} is not a positive integer"
            elif not audio:
                reason, problem = "malformed row", "the audio column is empty"
            elif not target and need_target:
                reason, problem = "empty target", f"empty {target_column}"
            else:
                file_path, resolved = resolve_audio(audio, audio_root)
                if file_path not in kind:
                    kind[file_path] = "file" if file_path.is_file() else "folder" if file_path.is_dir() else "missing"
                if kind[file_path] == "missing":
                    reason, problem = "missing audio", f"audio file {file_path} not found"
                elif kind[file_path] == "folder":
                    reason, problem = "audio path is a folder", f"audio path {file_path} is a folder, not an audio file"
        if problem is not None:
            if not skip:
                raise DataError(
                    f"{where}: {problem}. Fix the row, or set data.skip_invalid=true to drop bad rows "
                    "(the number dropped is reported)."
                )
            skipped.add(reason, where)
            continue
        transcript = fields[header.index("src_text")].strip() if "src_text" in header else None
        name = fields[column["id"]] if "id" in column else None
        samples.append(Sample({"src": AudioPath(resolved, int(n_frames))}, target, where, transcript=transcript or None,
                              id=name))
    if not samples:
        rows = sum(1 for line in lines[1:] if line is None or line.strip())
        raise no_samples(split, str(manifest), "rows", rows, skipped)
    _frames_from_sample_counts(manifest, samples)
    return samples


# ---------------------------------------------------------------------------------------------------
# Which unit n_frames counts


def _probe_unit(audio: str, n_frames: int) -> tuple[str, int] | None:
    """("samples" or "frames", the file's sample rate) by comparing n_frames with the audio header; None when
    the row has no audio header to read (precomputed features, zip entries, unreadable files)."""
    file, _, length = split_fairseq_path(audio)
    if Path(file).suffix in (".npy", ".zip"):  # fairseq's filterbank manifests: frames by construction
        return None
    try:
        info = sf.info(file)
    except Exception:  # unreadable: the processor names the problem when it loads the row
        return None
    n_samples = length if length is not None else info.frames
    frames = fbank_frames(n_samples, info.samplerate)
    if n_samples <= 0 or frames <= 0:
        return None
    # the nearer of the two readings on a log scale: they differ by the samples per 10 ms (160 at 16 kHz)
    nearer = abs(math.log(n_frames / n_samples)) < abs(math.log(n_frames / frames))
    return ("samples" if nearer else "frames"), info.samplerate


def _frames_from_sample_counts(manifest: Path, samples: list[Sample]) -> None:
    """A raw-audio manifest (n_frames = audio samples) gets n_frames converted to 10 ms frames, in place.

    mmxattn batches by 10 ms frames; read as frames, sample counts would make every utterance look 160
    times longer than it is (overlong errors, batches of one). The first rows with a readable audio header
    decide; the manifest is assumed to use one unit and one sample rate throughout, as fairseq writes them.
    """
    probes = []
    for sample in samples:
        probe = _probe_unit(sample.sources["src"], sample.sources["src"].n_frames)
        if probe is not None:
            probes.append(probe)
        if len(probes) == PROBED_ROWS:
            break
    sample_counting = [rate for unit, rate in probes if unit == "samples"]
    if not probes or len(sample_counting) * 2 <= len(probes):
        return
    rate = sample_counting[0]
    for sample in samples:
        audio = sample.sources["src"]
        sample.sources["src"] = AudioPath(str(audio), max(1, fbank_frames(audio.n_frames, rate)))
    log.info("%s: n_frames counts audio samples (fairseq's raw-audio manifests), not 10 ms frames; converted to "
             "frames at %d Hz for batching and data.max_len", manifest, rate)
