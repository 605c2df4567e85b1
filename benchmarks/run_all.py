"""Every side-by-side benchmark in one run: the tables of benchmarks/README.md.

    python benchmarks/run_all.py                    # CPU fp32 (about 20 minutes on 2 cores)
    python benchmarks/run_all.py --out results.md   # the same, every printed table also written to results.md
    python benchmarks/run_all.py --backend eager    # decoding with the plain modules instead of the cpu backend
    python benchmarks/run_all.py --device cuda --out gpu.md   # GPU: bf16, larger batches; one run, one file
    python benchmarks/run_all.py --quick            # tiny sizes: checks every script runs (CPU, ~7 minutes: compile_speed compiles)
    python benchmarks/run_all.py --quick --skip compile_speed memory   # a faster check of the others

On one GPU (--device cuda) the whole run is meant to fit in 10 minutes: the GPU sizes are those of each
script's --device cuda defaults (decoding batches 1, 32, 256; training batch 128; default repeats), and
compile_speed, the slowest part (torch.compile of the training step and of three decoding settings),
runs last. That is an estimate, not yet timed on a GPU: each benchmark's wall time is printed after
it, and --out writes the file line by line, so a run stopped at a time limit still leaves every table
finished before it in the file.

Options of run_all itself:
    --out FILE         also write everything printed (headers, tables, every timed run) to FILE as
                       markdown: each benchmark under a "##" heading, its "#" lines in text blocks, its
                       tables as they are
    --skip NAME ...    leave out benchmarks: decode_throughput train_efficiency context_scaling memory
                       compile_speed

A benchmark that fails is reported (its traceback, in the output and the file) and the run goes on with
the next one; run_all then exits with status 1.

Options after the script name are passed to each benchmark (see `--help` of each); `--backend` (the
mmxattn inference backend: auto, eager, cpu, compile, int8) goes to the decoding benchmarks
(decode_throughput, context_scaling, memory), `--no-cpu-speedups` and `--multi30k DIR` to train_efficiency and `--no-ct2`
(leave out the CTranslate2 peer) to decode_throughput; compile_speed compares the eager and compile
backends itself.
"""

from __future__ import annotations

import argparse
import datetime
import io
import shlex
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import compile_speed  # noqa: E402
import context_scaling  # noqa: E402
import decode_throughput  # noqa: E402
import memory  # noqa: E402
import train_efficiency  # noqa: E402

BENCHMARKS = (decode_throughput, train_efficiency, context_scaling, memory, compile_speed)

# options that only some benchmarks take: {option: (takes a value, the benchmarks that take it)}
SPECIFIC = {
    "--backend": (True, (decode_throughput, context_scaling, memory)),
    "--no-cpu-speedups": (False, (train_efficiency,)),
    "--no-ct2": (False, (decode_throughput,)),
    "--multi30k": (True, (train_efficiency,)),
}


def name_of(benchmark) -> str:
    return benchmark.__name__.rpartition(".")[2]


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


class MarkdownCopy(io.TextIOBase):
    """A text stream that writes through to `terminal` and writes a markdown copy of every line to `file`.

    Table lines (starting with "|") are copied as they are, other lines go into ```text blocks, blank
    lines end a block; the file is flushed at every line, so whatever finished is on disk.
    """

    def __init__(self, terminal, file):
        self.terminal, self.file = terminal, file
        self.pending, self.mode = "", None  # mode: None (after a blank line), "text" or "table"

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        if lines:
            self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.file.flush()

    def heading(self, text: str) -> None:
        """A markdown heading in the file only (it starts a new section)."""
        self._end_block()
        self.file.write(f"\n{text}\n\n")
        self.file.flush()

    def close_copy(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        self._end_block()
        self.file.flush()

    def _end_block(self) -> None:
        if self.mode == "text":
            self.file.write("```\n")
        self.mode = None

    def _line(self, line: str) -> None:
        if not line.strip():
            self._end_block()
            self.file.write("\n")
        elif line.startswith("|"):
            if self.mode == "text":
                self.file.write("```\n\n")
            self.mode = "table"
            self.file.write(line + "\n")
        else:
            if self.mode != "text":
                self.file.write("\n```text\n" if self.mode == "table" else "```text\n")
            self.mode = "text"
            self.file.write(line + "\n")


def run(benchmarks, argv: list[str], copy: MarkdownCopy | None) -> list[str]:
    """Runs each benchmark in turn; returns the names of those that failed (each failure printed, then the next)."""
    failed = []
    for benchmark in benchmarks:
        name = name_of(benchmark)
        if copy is not None:
            copy.heading(f"## {name}")
        start = time.perf_counter()
        try:
            benchmark.main(argv_for(benchmark, argv))
        except Exception:  # the other tables are still worth having (e.g. a one-off GPU run)
            failed.append(name)
            print(f"# {name} FAILED:\n" + "\n".join(f"#   {line}" for line in traceback.format_exc().splitlines()))
        print(f"# {name}: {time.perf_counter() - start:,.0f} s\n", flush=True)
    return failed


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    names = [name_of(b) for b in BENCHMARKS]
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--out", default=None)
    own.add_argument("--skip", nargs="+", default=[], choices=names)
    args, rest = own.parse_known_args(argv)
    benchmarks = [b for b in BENCHMARKS if name_of(b) not in args.skip]

    started = datetime.datetime.now(datetime.timezone.utc)
    copy = None
    if args.out:
        out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        out.write(f"# mmxattn benchmarks, {started:%Y-%m-%d %H:%M} UTC\n\n"
                  f"`python benchmarks/run_all.py {shlex.join(argv)}`"
                  + (f" (skipped: {', '.join(args.skip)})" if args.skip else "") + "\n")
        copy = MarkdownCopy(sys.stdout, out)
        sys.stdout = copy
    try:
        failed = run(benchmarks, rest, copy)
        total = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
        if copy is not None:
            copy.heading("## end of run")
        print(f"# load average (1, 5, 15 min) at the end of run_all: {common.load_average()}; "
              f"run_all took {total:,.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    finally:
        if copy is not None:
            copy.close_copy()
            sys.stdout = copy.terminal
            out.close()
            print(f"# written to {args.out}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
