"""Keep freed memory inside the process (Linux, glibc), so big tensors stop faulting in fresh pages.

glibc hands allocations above its mmap threshold straight to the kernel and returns freed memory at
the top of the heap once more than the trim threshold is free. A training step allocates and frees
the same multi-megabyte tensors (activations, logits, gradients) every step, so each step pays for
thousands of page faults on memory it just gave back, a noticeable share of a CPU training step
(benchmarks/README.md has the measurement). jemalloc or tcmalloc via LD_PRELOAD do the same, but need an install; `mallopt` is in every glibc.

The mmx-* commands call `keep_freed_memory()` at start; library users may call it themselves. A user's
own malloc settings (GLIBC_TUNABLES=glibc.malloc.*, MALLOC_*_ variables) win: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit: blocks below it come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before it is given back


def _user_set_malloc_options() -> bool:
    return "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
        key.startswith("MALLOC_") and key.endswith("_") for key in os.environ
    )


def glibc() -> ctypes.CDLL | None:
    """The C library this process uses, if it is glibc (musl and others: mallopt absent or a stub)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were changed.

    No-op (False) without glibc, or when the user set malloc options. The process's resident memory
    then stays near its peak instead of shrinking between steps.
    """
    libc = glibc()
    if libc is None or _user_set_malloc_options():
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
