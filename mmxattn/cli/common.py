"""What every mmxattn command shares: logging setup and turning user errors into clean messages."""

from __future__ import annotations

import functools
import logging
import os
import sys

from ..errors import MmxError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="[%(asctime)s %(levelname)s %(name)s] %(message)s", datefmt="%H:%M:%S")


def user_errors_exit(fn):
    """Print an MmxError as one message (no traceback) and exit 2; MMX_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MmxError as e:
            if os.environ.get("MMX_DEBUG"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
