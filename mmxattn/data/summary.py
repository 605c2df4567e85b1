"""How `mmx-data` words numbers, shared with encoder plugins that summarise their files
(`EncoderPlugin.summarize_files`), so that every line of its report reads alike."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np


def quantiles(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"min": a.min(), "median": float(np.quantile(a, 0.5, method="higher")),
            "p95": float(np.quantile(a, 0.95, method="higher")), "max": a.max(), "mean": a.mean()}


def _num(x: float, digits: int = 1) -> str:
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def describe_values(values: Sequence[float], digits: int = 1) -> str:
    """'min 3  median 12  p95 40  max 97  (mean 14.2)', or 'none'."""
    if not len(values):
        return "none"
    q = quantiles(values)
    return (f"min {_num(q['min'], digits)}  median {_num(q['median'], digits)}  p95 {_num(q['p95'], digits)}  "
            f"max {_num(q['max'], digits)}  (mean {q['mean']:,.{digits}f})")


def describe_counts(counter: Counter, n: int = 6) -> str:
    """The n most frequent values with their counts: '16000 Hz ×4 (50%), 8000 Hz ×4 (50%)'."""
    total = sum(counter.values())
    parts = [f"{key} ×{count:,}" + (f" ({100 * count / total:.0f}%)" if len(counter) > 1 else "")
             for key, count in counter.most_common(n)]
    return ", ".join(parts) + (f", ... ({len(counter)} distinct)" if len(counter) > n else "")


def read_headers(files: Sequence[str], read_one: Callable[[str], Any]) -> tuple[list[Any], list[str]]:
    """([read_one(file) for the files it reads], ['file (Error: message)' for those it cannot]).

    A file that does not read is listed, not raised: mmx-data reports it, and training names it when it gets
    there (or skips it with data.skip_invalid=true)."""
    facts, unreadable = [], []
    for file in files:
        try:
            facts.append(read_one(file))
        except Exception as e:  # noqa: BLE001 - reported to the user, see above
            unreadable.append(f"{file} ({type(e).__name__}: {str(e)[:80]})")
    return facts, unreadable


def unreadable_lines(unreadable: Sequence[str], sampled: int) -> list[str]:
    if not unreadable:
        return []
    return [f"    UNREADABLE: {len(unreadable):,} of {sampled:,} sampled; training stops at such a file unless "
            f"data.skip_invalid=true. E.g. {'; '.join(unreadable[:3])}"]
