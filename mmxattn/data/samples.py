"""The unit every data format is read into, and the text-file helpers the formats share."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError


@dataclass
class Sample:
    """One training example as found on disk, before any processing.

    sources: {source name: raw input} (a string for text, a file path for images and audio)
    target:  the target text
    where:   "file:line" (or similar) for error messages
    references: all reference texts for scoring (several captions per image); defaults to [target]
    transcript: what the source says, where the data has it (a speech manifest's src_text): the targets of an
                auxiliary CTC loss with loss.ctc_target=source
    id:         the sample's own name where the data gives one (a manifest's `id` column), for outputs
    """

    sources: dict[str, Any]
    target: str
    where: str
    references: list[str] = field(default_factory=list)
    transcript: str | None = None
    id: str | None = None

    def __post_init__(self):
        if not self.references:
            self.references = [self.target]


@dataclass
class SkipReport:
    """Counts what an explicit skip option dropped, by reason, with the first few places."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, what: str) -> str:
        parts = [f"{n} {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items()]
        return f"skipped {self.total} {what}: " + "; ".join(parts)


INVALID_UTF8 = "not valid UTF-8"  # the skip reason of undecodable lines


def check_not_folder(path: Path, expected: str, hint: str = "") -> None:
    """A folder where a file belongs (e.g. data.root/train.en made a directory by mistake) is named as such;
    otherwise it would read as "not found", which sends the user looking for a file that is there."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, but {expected} is expected there{'. ' + hint if hint else ''}")


def decode_lines(raw_lines: Iterable[bytes], name: str, *, keep_invalid: bool = False,
                 hint: str = "") -> list[str | None]:
    """UTF-8 lines without line endings. A line that does not decode is an error naming `name`:LINE, or
    (keep_invalid) None in its place, so that the caller can skip it and count it without losing the line
    numbers that keep parallel files aligned."""
    lines: list[str | None] = []
    for number, raw in enumerate(raw_lines, 1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as e:
            if not keep_invalid:
                raise DataError(f"{name}:{number}: {INVALID_UTF8} ({e.reason} at byte {e.start}); re-encode the "
                                f"file as UTF-8 (e.g. iconv -f latin1 -t utf-8){hint}") from None
            lines.append(None)
    return lines


SKIP_HINT = ", or set data.skip_invalid=true to skip such lines (they are counted and reported)"


def read_lines(path: str | Path, *, keep_invalid: bool = False, hint: str = "") -> list[str | None]:
    """All lines of a UTF-8 text file (gzip if it ends in .gz), without line endings; see `decode_lines`."""
    path = Path(path)
    check_not_folder(path, "a UTF-8 text file")
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the path (data.root and the split/language names).")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return decode_lines(f, str(path), keep_invalid=keep_invalid, hint=hint)
    except (OSError, EOFError) as e:  # truncated or not really gzip
        raise DataError(f"{path}: cannot be read ({e}); is it a complete {'gzip' if path.suffix == '.gz' else 'text'} file?") from e


def find_file(root: Path, stem: str) -> Path:
    """root/stem, or root/stem.gz if only that exists."""
    candidates = (root / stem, root / f"{stem}.gz")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    for candidate in candidates:
        check_not_folder(candidate, "a UTF-8 text file (optionally .gz)", f"Check data.root={root} and the split/language names")
    raise DataError(
        f"{root / stem}[.gz]: file not found. data.root={root} must hold it "
        f"(files present: {', '.join(sorted(p.name for p in root.iterdir())[:12]) if root.is_dir() else 'none, the folder does not exist'})"
    )


def no_samples(split: str, files: str, what: str, entries: int, skipped: SkipReport) -> DataError:
    """The error for a split that holds nothing usable: no entries at all, or all `entries` invalid and skipped.

    Raised by the readers, which know the split's files; the tokenizer would otherwise fail on an empty
    training text with a SentencePiece traceback, and an empty validation split with a message naming no file.
    """
    why = f"all {entries} were invalid and {skipped.summary('entries so far')}" if entries else "it is empty"
    return DataError(f"{files}: no usable {what} in data.{split} ({why}){'; there is no training text' if split == 'train' else ''}. "
                     f"Check data.root and data.{split}, and that the file is the complete {split} split")


def iter_with_where(path: Path, lines: list[str]) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(lines, 1):
        yield f"{path}:{number}", line
