"""Quickstart data: small corpora that mmxattn generates on the user's machine, so that a recipe runs
with nothing downloaded (`data.synthetic=<name>` writes `data.root` first).

The generators are not part of the data path: they write ordinary files (line-aligned text, FLAC with
fairseq manifests, JPEG with COCO captions JSON, TSV), which the real readers in mmxattn/data then read.
They are imported only when a quickstart asks for data, and write only into an empty folder or one they
wrote themselves (`stamp`).
"""

from __future__ import annotations

import fcntl
import importlib
from pathlib import Path

from ..errors import ConfigError
from . import stamp

# data.synthetic -> "module:function(root, seed=...)", imported on use (PIL, soundfile, numpy)
GENERATORS = {"translation": "translation:write_corpus", "speech": "speech:write_speech_corpus",
              "captions": "captions:write_captions", "multimodal": "multimodal:write_multimodal_corpus"}


def write(name: str, root: str | Path, *, seed: int, asked_by: str = "data.synthetic") -> None:
    """Generate quickstart corpus `name` in `root` once; processes started together (SLURM ranks) wait
    for the one that writes it. `asked_by` names what asked for it, for the message when `root` holds
    files of the user's own: those are never written into.
    """
    if name not in GENERATORS:
        raise ConfigError(f"data.synthetic={name!r}; expected one of {', '.join(GENERATORS)}")
    root = Path(root)
    foreign = stamp.foreign_files(root)
    if foreign:
        raise ConfigError(
            f"data.root={root} holds files that mmxattn did not generate ({', '.join(foreign[:6])}"
            f"{', ...' if len(foreign) > 6 else ''}), but data.synthetic={name} (from {asked_by}) would write a "
            "generated corpus there. To train on the files in it, drop the quickstart recipe (recipe=none, or a "
            "base recipe) or set data.synthetic=null; to run the quickstart, point data.root at a new or empty "
            "folder."
        )
    root.mkdir(parents=True, exist_ok=True)
    module, function = GENERATORS[name].split(":")
    generator = getattr(importlib.import_module(f".{module}", __name__), function)
    with open(root / stamp.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        generator(root, seed=seed)
