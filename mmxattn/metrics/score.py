"""The result every metric returns: a name, a value and the signature that makes it comparable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Score:
    name: str
    value: float
    signature: str = ""

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.2f}" + (f"  ({self.signature})" if self.signature else "")
