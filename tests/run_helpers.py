"""What the distributed, resume and checkpoint tests share: a clean environment for a child `mmx-train`,
one thread per process, and reading the `trace_data` files."""

from __future__ import annotations

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
_LAUNCH = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "MMX_RANK_CONFIG")


def cli_env() -> dict[str, str]:
    """This process's environment for a child `mmx-train`: no DDP launch variables, one thread, the repo
    root importable (for tests.fault_injection callbacks)."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}")
    return env


def read_trace(path: Path) -> list[tuple[int, int, int, float, list[int]]]:
    """(step, epoch, batch, summed loss, sample indices) per micro-batch, from a trace_data=true file."""
    rows = []
    for line in path.read_text().splitlines():
        step, epoch, batch, loss, _tokens, ids = line.split("\t")
        rows.append((int(step), int(epoch), int(batch), float(loss), [int(i) for i in ids.split(",")]))
    return rows


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal up to float summation order: 1e-6 absolute, except the biases of key projections (inside
    qkv_proj / kv_proj). Their exact gradient is zero (softmax ignores a shift shared by all keys), so
    what they get is rounding noise, which AdamW normalizes into steps of up to the learning rate; for
    them 1e-4 (well below one step of lr 2e-3) is the tolerance."""
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        loose = name.endswith(("qkv_proj.bias", "kv_proj.bias"))
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-4 if loose else 1e-6, msg=name)
