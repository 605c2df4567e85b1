"""The unit every data format is read into, and the text-file helpers the formats share."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError


@dataclass
class Sample:
    """One training example as found on disk, before any processing.

    sources: {source name: raw input} (a string for text, a file path for images and audio)
    target:  the target text
    where:   "file:line" (or similar) for error messages
    references: all reference texts for scoring (several captions per image); defaults to [target]
    """

    sources: dict[str, Any]
    target: str
    where: str
    references: list[str] = field(default_factory=list)

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


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file (gzip if it ends in .gz), without line endings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the path (data.root and the split/language names).")
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    lines.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8") from e
    except (OSError, EOFError) as e:  # truncated or not really gzip
        raise DataError(f"{path}: cannot be read ({e}); is it a complete {'gzip' if path.suffix == '.gz' else 'text'} file?") from e
    return lines


def find_file(root: Path, stem: str) -> Path:
    """root/stem, or root/stem.gz if only that exists."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root / stem}[.gz]: file not found. data.root={root} must hold it "
        f"(files present: {', '.join(sorted(p.name for p in root.iterdir())[:12]) if root.is_dir() else 'none, the folder does not exist'})"
    )


def iter_with_where(path: Path, lines: list[str]) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(lines, 1):
        yield f"{path}:{number}", line
