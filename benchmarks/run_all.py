"""Every side-by-side benchmark in one run: the tables of benchmarks/README.md.

    python benchmarks/run_all.py                    # CPU fp32 (about 20 minutes on 2 cores)
    python benchmarks/run_all.py --device cuda      # GPU: bf16, larger batches
    python benchmarks/run_all.py --quick            # tiny sizes: checks every script runs (CPU, ~7 minutes: compile_speed compiles)

Options after the script name are passed to each benchmark (see `--help` of each).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compile_speed  # noqa: E402
import context_scaling  # noqa: E402
import decode_throughput  # noqa: E402
import memory  # noqa: E402
import train_efficiency  # noqa: E402


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    for benchmark in (decode_throughput, train_efficiency, context_scaling, memory, compile_speed):
        benchmark.main(argv)
        print(flush=True)


if __name__ == "__main__":
    main()
