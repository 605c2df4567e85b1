"""The folders that quickstart data generators write into: empty ones, or ones they wrote themselves.

A generator owns a folder through its stamp file `CORPUS`, written before the first data file ("being
written") and rewritten with the corpus description when the corpus is complete. So a folder holding a
user's files is never written into, and a generator killed midway still owns its half-written folder and
regenerates it on the next run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)
_started: dict[str, float] = {}  # root -> when its generation began, for the log

STAMP = "CORPUS"
STAMP_PREFIX = "synthetic-"  # every generator's description starts with it: "synthetic-translation v1 ..."
LOCK = ".write.lock"  # ranks started together take turns generating (mmxattn.train)


class ForeignFolderError(DataError):
    """The folder holds files that no mmxattn generator wrote."""

    def __init__(self, root: Path, files: list[str]):
        self.root, self.files = root, files
        shown = ", ".join(files[:6]) + (", ..." if len(files) > 6 else "")
        super().__init__(f"{root} holds files that mmxattn did not generate ({shown}); a data generator writes "
                         "only into an empty folder or one it wrote itself")


def owns(root: Path) -> bool:
    stamp = root / STAMP
    return stamp.is_file() and stamp.read_text(encoding="utf-8", errors="replace").startswith(STAMP_PREFIX)


def foreign_files(root: Path) -> list[str]:
    """Names of what is in `root` that a generator did not write; [] for a missing, empty or owned folder."""
    if not root.exists():
        return []
    if not root.is_dir():
        return [root.name]
    if owns(root):
        return []
    return sorted(p.name for p in root.iterdir() if p.name != LOCK)


def begin(root: str | Path, description: str) -> bool:
    """Claim `root` for a generator; True if it already holds this exact corpus (nothing to write).

    description: one line naming the generator and everything that changes its output (seed, sizes).
    Raises ForeignFolderError if `root` holds anything a generator did not write.
    """
    root = Path(root)
    files = foreign_files(root)
    if files:
        raise ForeignFolderError(root, files)
    stamp = root / STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == description + "\n":
        return True
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{STAMP_PREFIX}being-written: {description}\n", encoding="utf-8")
    _started[str(root)] = time.monotonic()
    log.info("generating %s in %s (once: later runs reuse it) ...", description, root)
    return False


def finish(root: str | Path, description: str) -> None:
    """Mark the corpus complete (the last write: a crash before it regenerates everything)."""
    (Path(root) / STAMP).write_text(description + "\n", encoding="utf-8")
    started = _started.pop(str(root), None)
    log.info("generated %s in %s%s", description, root, f" in {time.monotonic() - started:.0f} s" if started else "")
