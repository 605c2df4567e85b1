"""What the recipes/<task>/other_tasks.py scripts share: a recipe trained on a task through the real
`mmx-train`, as a user would run it, and the markdown table of the results that the recipes' READMEs record.

The scripts run as files (`python recipes/<task>/other_tasks.py`) and put the repository root on sys.path
to import it as recipes.other_tasks_common.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(name: str, overrides: list[str]) -> dict:
    """`mmx-train *overrides`, run from the repository root into a new run folder
    outputs/other-tasks/<name>-<date>-<time>; its results.json plus `wall_seconds`, the training's wall time.
    A failed training raises CalledProcessError."""
    run_dir = REPO / "outputs" / "other-tasks" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = ["mmx-train", *overrides, f"hydra.run.dir={run_dir}"]
    print("+", " ".join(command), flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results = json.loads((run_dir / "results.json").read_text())
    results["wall_seconds"] = round(time.monotonic() - started)
    return results


def wall_time(seconds: int) -> str:
    """Minutes and seconds, as the READMEs' tables give them: 187 -> "3 min 07 s"."""
    return f"{seconds // 60} min {seconds % 60:02d} s"


def table_row(cells: list) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def print_table(columns: list[str], rows: list[str], left: int = 1) -> None:
    """A blank line, then a markdown table: `columns` as its header, the first `left` of them aligned left and
    the others (numbers) right, then `rows` (from `table_row`)."""
    alignment = ["---"] * left + ["---:"] * (len(columns) - left)
    print("\n" + "\n".join([table_row(columns), table_row(alignment), *rows]))
