"""Does `torch.compile` pay? mmxattn eager against mmxattn compiled, training step and decoding.

    python benchmarks/compile_speed.py                  # CPU fp32, the table in benchmarks/README.md
    python benchmarks/compile_speed.py --device cuda    # GPU: bf16 autocast for training, bf16 decoding
    python benchmarks/compile_speed.py --quick          # tiny sizes: checks that it runs

What `compile.train=true` and `--backend compile` switch on, on copies of one model with the same weights:
1. Training step (forward, label-smoothed loss, backward, fused AdamW) at batch 32 × 30: the eager model
   against the model compiled in place with `model.compile()` (nn.Module.compile: what mmx-train calls
   with `compile.train=true`; EncoderDecoder has no compile method of its own), both with
   `apply_cpu_speedups` on CPU as mmx-train builds them; time of each, and the one-off compile time.
   Then steps over batches of four different lengths, as real batches come: the compiled model
   recompiles once for dynamic shapes, and those kernels may be slower.
2. Decoding (greedy batch 1 and 32, beam 5 batch 1; 32 tokens forced; `model.generate`): the eager
   backend (`inference.prepare(model, "eager")`, the plain modules) against `inference.prepare(model,
   "compile")` (the flattened decode step under torch.compile); tokens/s of each, and, for reference,
   the cpu backend (the default on a CPU) on the same inputs.
The peer here is mmxattn itself: what decides whether compiling is worth its start-up minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import decode_throughput  # noqa: E402
import train_efficiency  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def training(env, batch_size: int, length: int) -> dict:
    eager = train_efficiency.make_trainer("mmxattn", env)
    compiled = train_efficiency.make_trainer("mmxattn", env)
    compiled.model.load_state_dict(eager.model.state_dict())
    compiled.model.compile()  # nn.Module.compile, in place (state-dict keys unchanged): what compile.train does
    batch = train_efficiency.random_batch(batch_size, length, env.size.vocab, env.device)
    first = timed(lambda: compiled.step(batch))  # compiles (forward and backward)
    t_eager, t_compiled = common.time_pair(
        lambda: eager.step(batch), lambda: compiled.step(batch), env.device, repeats=env.repeats + 2, warmup=1
    )
    print(f"\n# training step, batch {batch_size} × {length} tokens, fused AdamW, dropout 0.1, "
          f"{'apply_cpu_speedups on both (as mmx-train on CPU)' if train_efficiency.cpu_speedups(env) else 'plain nn.Dropout'}; "
          f"compiled = model.compile() (first compiled step: {first:.0f} s, compilation included)")
    print("| | eager | compiled | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| step time (ms) | {1e3 * t_eager:,.0f} | {1e3 * t_compiled:,.0f} | {t_eager / t_compiled:.2f}× |")

    lengths = [length, int(0.7 * length), int(1.3 * length), int(0.85 * length)]
    batches = [train_efficiency.random_batch(batch_size, n, env.size.vocab, env.device, seed=n) for n in lengths]
    recompile = sum(timed(lambda: compiled.step(b)) for b in batches[1:3])  # new shapes: dynamic recompilation
    for b in batches:  # warm both sides on every shape
        eager.step(b)
        compiled.step(b)
    t_eager_var, t_compiled_var = common.time_pair(
        lambda: [eager.step(b) for b in batches], lambda: [compiled.step(b) for b in batches],
        env.device, repeats=env.repeats, warmup=0,
    )
    print(f"| 4 batches of lengths {lengths} (s) | {t_eager_var:.2f} | {t_compiled_var:.2f} "
          f"| {t_eager_var / t_compiled_var:.2f}× |")
    print(f"\n# recompiling for new shapes took {recompile:.0f} s (once per run)", flush=True)
    return dict(step_eager=t_eager, step_compiled=t_compiled, ratio=t_eager / t_compiled, compile_s=first,
                varied_ratio=t_eager_var / t_compiled_var)


def decoding(env, source_len: int, new_tokens: int, batch_sizes: list[int]) -> list[dict]:
    import copy

    from mmxattn.inference.compiled import cpp_compiler_available

    plain = common.place(common.mmx_model(env.size), env)
    names = ("eager", "compile", "cpu") if env.device.type == "cpu" else ("eager", "compile")
    models = {name: common.inference.prepare(copy.deepcopy(plain), name) for name in names}
    if env.device.type == "cpu" and not cpp_compiler_available():
        print("\n# no C++ compiler on PATH: backend compile falls back to eager on CPU; its column is eager")
    print(f"\n# decoding, source {source_len} tokens, {new_tokens} tokens forced; model.generate under inference_mode; "
          f"median of {env.repeats} alternating repeats")
    reference = "cpu" in models
    print("| strategy | batch | eager backend tok/s | compile backend tok/s | compile ÷ eager | first compile decode (s)"
          + (" | cpu backend tok/s (reference) |" if reference else " |"))
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if reference else ""))
    rows = []
    for beam, batch in [(1, b) for b in batch_sizes] + [(5, 1)]:
        tokens, mask = common.source_batch(batch, source_len, env.size.vocab, device=env.device)
        run = {name: (lambda m=model: decode_throughput.mmx_decode(m, tokens, mask, beam=beam, new_tokens=new_tokens))
               for name, model in models.items()}
        first = timed(run["compile"])
        outputs = {name: [h[0].tokens for h in fn()] for name, fn in run.items()}
        assert outputs["compile"] == outputs["eager"], "compiled decoding gave other tokens"
        names = list(run)
        medians = [statistics.median(times) for times in
                   common.time_runs([run[n] for n in names], env.device, repeats=env.repeats, warmup=1)]
        t = dict(zip(names, medians))
        generated = batch * new_tokens
        row = dict(strategy="greedy" if beam == 1 else f"beam {beam}", batch=batch, eager=generated / t["eager"],
                   compiled=generated / t["compile"], ratio=t["eager"] / t["compile"], compile_s=first,
                   cpu=generated / t["cpu"] if reference else None)
        rows.append(row)
        print(f"| {row['strategy']} | {batch} | {common.fmt_rate(row['eager'])} | {common.fmt_rate(row['compiled'])} "
              f"| {row['ratio']:.2f}× | {first:.0f} |" + (f" {common.fmt_rate(row['cpu'])} |" if reference else ""),
              flush=True)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--batch", type=int, default=None, help="training sentences per step (default 32; cuda 128)")
    parser.add_argument("--length", type=int, default=30, help="training source and target tokens per sentence")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per source (forced)")
    args = parser.parse_args(argv)
    env = common.setup(args)
    batch_size = args.batch or (4 if env.quick else 128 if env.device.type == "cuda" else 32)
    length = 8 if env.quick else args.length
    decode_batches = [1, 4] if env.quick else [1, 256] if env.device.type == "cuda" else [1, 32]

    common.header("torch.compile: mmxattn eager vs mmxattn compiled", env)
    result = dict(training=training(env, batch_size, length))
    result["decoding"] = decoding(env, 30, 8 if env.quick else args.new_tokens, decode_batches)
    print(f"# load average (1, 5, 15 min) at end {common.load_average()}")
    return result


if __name__ == "__main__":
    main()
