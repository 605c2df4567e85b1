"""Peak memory: a training step, and beam search over a 3000-frame context, mmxattn vs transformers.

    python benchmarks/memory.py                  # CPU: peak resident memory of each case, in a fresh process
    python benchmarks/memory.py --device cuda    # GPU: torch.cuda.max_memory_allocated, bf16
    python benchmarks/memory.py --quick          # tiny sizes: checks that it runs

What is reported is the memory a case adds on top of what was in use before it, at its peak.
- Training step: on top of the model and its optimizer state (one step has run before), one step; the
  mmxattn model has `apply_cpu_speedups` applied on CPU, as mmx-train does.
- Beam search: everything the decoding path allocates, from before `mmxattn.inference.prepare(model,
  --backend)` (default auto = cpu on a CPU): whatever prepare makes (the cpu backend's packed weight
  copies), then a first and a second decode. The peer has no prepare step: from before its first decode. Both
  sides first run the same path once on a tiny model, so that imports and one-time library set-up are
  not counted. Also reported: what prepare alone left resident, and one decode after a first one
  (the steady state, the only figure this script gave before the inference backends).
On CPU each case runs in its own Python process (so one case's freed memory cannot hide another's peak)
with glibc told to return large blocks to the system (MALLOC_MMAP_THRESHOLD_); the peak is Linux's
VmHWM, reset (/proc/self/clear_refs) right before the measured part. On GPU the CUDA allocator's own
peak counter is used.
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


class Meter:
    """Bytes in use now, and the peak since the last `reset` (CPU: VmRSS / VmHWM; CUDA: the allocator's counters)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> int:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current resident size
                f.write("5")
        return self.now()

    def now(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return 1024 * _proc_kib("VmRSS")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return 1024 * _proc_kib("VmHWM")


def measure(fn, device: torch.device) -> int:
    """Bytes that `fn` adds at its peak over what is in use before it (after one warm-up call)."""
    fn()
    meter = Meter(device)
    before = meter.reset()
    fn()
    return meter.peak() - before


def measure_path(prepare, decode, device: torch.device) -> dict:
    """The whole decoding path from before `prepare()`: prepare, a first and a second `decode(prepared)`.

    total: the peak over all of it minus what was in use before prepare; prepared: what prepare left
    resident; steady: the peak of the second decode over what was in use right before it.
    """
    meter = Meter(device)
    before = meter.reset()
    prepared = prepare()
    after_prepare = meter.now()
    decode(prepared)
    first_peak = meter.peak()
    before_second = meter.reset()
    decode(prepared)
    second_peak = meter.peak()
    return dict(total=max(first_peak, second_peak) - before, prepared=after_prepare - before,
                steady=second_peak - before_second)


def run_case(case: str, args, env) -> dict:
    import context_scaling
    import train_efficiency

    kind, side = case.split("-")
    if kind == "train":
        trainer = train_efficiency.make_trainer(side, env)
        batch = train_efficiency.random_batch(args.train_batch, args.train_length, env.size.vocab, env.device)
        trainer.step(batch)  # the optimizer state exists before the measured step, as in any later step
        return dict(total=measure(lambda: trainer.step(batch), env.device))

    def decode(model):
        if side == "mmxattn":
            return context_scaling.mmx_decode(model.decoder, context, args.beam, args.new_tokens)
        return context_scaling.peer_decode(model, context, args.beam, args.new_tokens)

    # the same path once on a tiny model first: imports and one-time library set-up are not the decode's
    tiny = common.SMALL
    context = context_scaling.random_context(2, 20, tiny.d_model, env)
    if side == "mmxattn":
        decode(common.for_inference(common.mmx_model(tiny), env, args.backend))
    else:
        decode(common.place(common.peer_model(tiny), env))
    context = context_scaling.random_context(args.beam_batch, args.frames, env.size.d_model, env)
    if side == "mmxattn":
        model = common.place(common.mmx_model(env.size), env)  # plain weights, as loaded from a checkpoint
        result = measure_path(lambda: common.inference.prepare(model, args.backend), decode, env.device)
        result["backend"] = model.backend
        return result
    peer = common.place(common.peer_model(env.size), env)
    return measure_path(lambda: peer, decode, env.device)


def in_fresh_process(case: str, argv: list[str]) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--child", case, *argv], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"memory case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    common.add_backend_arg(parser)
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
        print(json.dumps(run_case(args.child, args, env)))
        return {}

    common.header("peak memory: mmxattn vs transformers (Marian, same size)", env)
    isolated = env.device.type == "cpu"
    results = {case: in_fresh_process(case, argv) if isolated else run_case(case, args, env) for case in CASES}
    mib = {case: {k: v / 2**20 for k, v in r.items() if k != "backend"} for case, r in results.items()}
    backend = results["beam-mmxattn"]["backend"]
    speedups = "apply_cpu_speedups applied (as mmx-train on CPU)" if env.device.type == "cpu" else "plain"
    ours, theirs = mib["beam-mmxattn"], mib["beam-transformers"]
    beam = f"beam {args.beam} search, batch {args.beam_batch}, {args.frames} context frames, {args.new_tokens} tokens"
    print(f"# mmxattn training: {speedups}; mmxattn decoding: backend {backend} "
          f"(inference.prepare(model, {args.backend!r})); each case in a fresh process\n")
    print(f"| case | mmxattn ({backend}) (MiB) | transformers (MiB) | transformers ÷ mmxattn |")
    print("|---|---:|---:|---:|")
    print(f"| training step, batch {args.train_batch} × {args.train_length} | {mib['train-mmxattn']['total']:,.0f} "
          f"| {mib['train-transformers']['total']:,.0f} "
          f"| {mib['train-transformers']['total'] / mib['train-mmxattn']['total']:.2f}× |")
    print(f"| {beam}: whole path from before prepare (prepare + 2 decodes) | {ours['total']:,.0f} "
          f"| {theirs['total']:,.0f} | {theirs['total'] / ours['total']:.2f}× |")
    made = {"cpu": ": packed weight copies", "eager": ": makes no copies"}.get(backend, "")
    print(f"| of which left resident by prepare ({backend} backend{made}) | {ours['prepared']:,.0f} "
          f"| {theirs['prepared']:,.0f} (no prepare) | |")
    print(f"| {beam}: one decode after a first one (steady state) | {ours['steady']:,.0f} | {theirs['steady']:,.0f} "
          f"| {theirs['steady'] / ours['steady']:.2f}× |")
    print(f"# load average (1, 5, 15 min) at end {common.load_average()}")
    return mib


if __name__ == "__main__":
    main()
