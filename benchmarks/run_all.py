"""Every side-by-side benchmark in one run: the tables of benchmarks/README.md.

    python benchmarks/run_all.py                    # CPU fp32 (about 20 minutes on 2 cores)
    python benchmarks/run_all.py --backend eager    # decoding with the plain modules instead of the cpu backend
    python benchmarks/run_all.py --device cuda      # GPU: bf16, larger batches
    python benchmarks/run_all.py --quick            # tiny sizes: checks every script runs (CPU, ~7 minutes: compile_speed compiles)

Options after the script name are passed to each benchmark (see `--help` of each); `--backend` (the
mmxattn inference backend: auto, eager, cpu, compile) goes to the decoding benchmarks
(decode_throughput, context_scaling, memory) and `--no-cpu-speedups` to train_efficiency; compile_speed
compares the eager and compile backends itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import compile_speed  # noqa: E402
import context_scaling  # noqa: E402
import decode_throughput  # noqa: E402
import memory  # noqa: E402
import train_efficiency  # noqa: E402

# options that only some benchmarks take: {option: (takes a value, the benchmarks that take it)}
SPECIFIC = {
    "--backend": (True, (decode_throughput, context_scaling, memory)),
    "--no-cpu-speedups": (False, (train_efficiency,)),
}


def argv_for(benchmark, argv: list[str]) -> list[str]:
    """`argv` without the options that `benchmark` does not take."""
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in SPECIFIC:
            takes_value, takers = SPECIFIC[name]
            width = 2 if takes_value and "=" not in argv[i] else 1
            if benchmark in takers:
                out += argv[i : i + width]
            i += width
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    for benchmark in (decode_throughput, train_efficiency, context_scaling, memory, compile_speed):
        benchmark.main(argv_for(benchmark, argv))
        print(flush=True)
    print(f"# load average (1, 5, 15 min) at the end of run_all: {common.load_average()}")


if __name__ == "__main__":
    main()
