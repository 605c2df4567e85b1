"""Peak memory: a training step, and beam search over a 3000-frame context, mmxattn vs transformers.

    python benchmarks/memory.py                  # CPU: peak resident memory of each case, in a fresh process
    python benchmarks/memory.py --device cuda    # GPU: torch.cuda.max_memory_allocated, bf16
    python benchmarks/memory.py --quick          # tiny sizes: checks that it runs

What is reported is the memory a case adds on top of the model (and optimizer state) already in place:
the peak during the case minus what was in use just before it. On CPU each case runs in its own Python
process (so one case's freed memory cannot hide another's peak) with glibc told to return large blocks to
the system (MALLOC_MMAP_THRESHOLD_), after one warm-up run; the peak is Linux's VmHWM, reset right
before the measured run. On GPU the CUDA allocator's own peak counter is used.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CASES = ("train-mmxattn", "train-transformers", "beam-mmxattn", "beam-transformers")


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def measure(fn, device: torch.device) -> int:
    """Bytes that `fn` adds at its peak over what is in use before it (after one warm-up call)."""
    fn()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current resident size
        f.write("5")
    before = _proc_kib("VmRSS")
    fn()
    return 1024 * (_proc_kib("VmHWM") - before)


def run_case(case: str, args, env) -> int:
    import context_scaling
    import train_efficiency

    kind, side = case.split("-")
    if kind == "train":
        trainer = train_efficiency.make_trainer(side, env)
        batch = train_efficiency.random_batch(args.train_batch, args.train_length, env.size.vocab, env.device)
        trainer.step(batch)  # the optimizer state exists before the measured step, as in any later step
        return measure(lambda: trainer.step(batch), env.device)
    context = context_scaling.random_context(args.beam_batch, args.frames, env.size.d_model, env)
    if side == "mmxattn":
        decoder = common.prepare(common.mmx_model(env.size), env).decoder
        return measure(lambda: context_scaling.mmx_decode(decoder, context, args.beam, args.new_tokens), env.device)
    peer = common.prepare(common.peer_model(env.size), env)
    return measure(lambda: context_scaling.peer_decode(peer, context, args.beam, args.new_tokens), env.device)


def in_fresh_process(case: str, argv: list[str]) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--child", case, *argv], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"memory case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes"]


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-length", type=int, default=30)
    parser.add_argument("--frames", type=int, default=3000, help="context frames for the beam search")
    parser.add_argument("--beam-batch", type=int, default=4)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_batch, args.train_length, args.frames, args.beam_batch, args.new_tokens = 4, 8, 300, 2, 6
    env = common.setup(args)
    if args.child:
        print(json.dumps({"bytes": run_case(args.child, args, env)}))
        return {}

    common.header("peak memory: mmxattn vs transformers (Marian, same size)", env)
    isolated = env.device.type == "cpu"
    results = {case: in_fresh_process(case, argv) if isolated else run_case(case, args, env) for case in CASES}
    mib = {case: value / 2**20 for case, value in results.items()}
    print("\n| case | mmxattn (MiB) | transformers (MiB) | transformers ÷ mmxattn |")
    print("|---|---:|---:|---:|")
    print(f"| training step, batch {args.train_batch} × {args.train_length} | {mib['train-mmxattn']:,.0f} "
          f"| {mib['train-transformers']:,.0f} | {mib['train-transformers'] / mib['train-mmxattn']:.2f}× |")
    print(f"| beam {args.beam} search, batch {args.beam_batch}, {args.frames} context frames, {args.new_tokens} tokens "
          f"| {mib['beam-mmxattn']:,.0f} | {mib['beam-transformers']:,.0f} "
          f"| {mib['beam-transformers'] / mib['beam-mmxattn']:.2f}× |")
    return mib


if __name__ == "__main__":
    main()
