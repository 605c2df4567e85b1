"""The compile backend: the decoder's flattened one-token step under torch.compile (dynamic shapes: the
live rows and the cache length change from step to step, so it compiles once, on the first decode).

On CPU inductor writes C++ and needs a compiler; without one this backend falls back to eager with a
warning rather than failing deep inside inductor. Whether it pays: benchmarks/compile_speed.py.
"""

from __future__ import annotations

import logging
import os
import shutil

from torch import nn

from .cpu import FastDecoder

log = logging.getLogger(__name__)


def cpp_compiler_available() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "clang++"))


def apply_compile(model: nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type == "cpu" and not cpp_compiler_available():
        log.warning("backend=compile on CPU needs a C++ compiler (g++ or clang++) and none is on PATH: decoding "
                    "eagerly instead. Install one (e.g. `apt install g++`) or choose --backend cpu")
        return
    model.decoder = FastDecoder.from_decoder(model.decoder, compile_step=True)
