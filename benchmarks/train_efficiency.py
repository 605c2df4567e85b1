"""Training efficiency: the training step against transformers, padding on real data, and MFU.

    python benchmarks/train_efficiency.py                  # CPU fp32, the table in benchmarks/README.md
    python benchmarks/train_efficiency.py --device cuda    # GPU: bf16 autocast, larger batches
    python benchmarks/train_efficiency.py --quick          # tiny sizes: checks that it runs

1. Step speed: one optimizer step (forward, label-smoothed cross-entropy, backward, AdamW) of mmxattn and
   of a same-sized transformers Marian model on the same batch (32 × 30 tokens by default). On CPU the
   mmxattn model gets `mmxattn.training.cpu_speedups.apply_cpu_speedups` (every nn.Dropout becomes a
   FastCpuDropout), as mmx-train applies it on CPU with `cpu_speedups: true` (the default);
   `--no-cpu-speedups` measures the plain model. The peer runs as transformers ships it. The two steps
   alternate (mmxattn, transformers, mmxattn, ...) for `--repeats` + 2 pairs (default --repeats 5: 7
   pairs); the table gives the median step times, and the ratio (transformers step time ÷ mmxattn step
   time, > 1 = mmxattn faster) of each pair is printed, with their minimum and median.
2. MFU: the model FLOPs of that step ÷ its time, against two peaks: the nominal fp32 peak (cores × clock
   × FLOPs/cycle, assumptions printed) and the measured matmul ceiling, read right before each timed step
   (the median of the per-step ratios).
3. Useful tokens/s on Multi30k (`--multi30k`, default ../shared/data/multi30k): the same mmxattn model fed
   (a) fixed-size batches in random order, the common setup, and (b) mmxattn's token-budget,
   length-bucketed batches (`TokenBudgetBatchSampler`) with a budget equal to (a)'s mean padded size.
   Counts non-padding target tokens per second and prints the padding fraction of both.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mmxattn.data.batching import TokenBudgetBatchSampler  # noqa: E402
from mmxattn.tokenizer import BOS, EOS, PAD, Tokenizer  # noqa: E402
from mmxattn.training.cpu_speedups import apply_cpu_speedups  # noqa: E402

IGNORE = -100
DEFAULT_MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


# ------------------------------------------------------------------------------------------- batches


def make_batch(sources: list[list[int]], targets: list[list[int]], device) -> dict:
    """Pad token lists into the tensors both models train on: source + mask, target_in, target_out."""
    b, s, t = len(sources), max(map(len, sources)), max(map(len, targets)) + 1
    src = torch.full((b, s), PAD, dtype=torch.long)
    tgt_in = torch.full((b, t), PAD, dtype=torch.long)
    tgt_out = torch.full((b, t), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(zip(sources, targets)):
        src[row, : len(x)] = torch.tensor(x)
        tgt_in[row, 0], tgt_in[row, 1 : len(y) + 1] = BOS, torch.tensor(y)
        tgt_out[row, : len(y)], tgt_out[row, len(y)] = torch.tensor(y), EOS
    return {
        "src": src.to(device), "mask": (src != PAD).to(device),
        "target_in": tgt_in.to(device), "target_out": tgt_out.to(device),
        "useful": sum(len(y) + 1 for y in targets), "target_slots": b * t,
        "source_real": sum(map(len, sources)), "source_slots": b * s,
    }


def random_batch(batch: int, length: int, vocab: int, device, seed: int = 0) -> dict:
    """batch × length source and target tokens, lengths 80–100% of `length` (a little padding)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(int(0.8 * length), length + 1, size=(2, batch))
    lens[:, 0] = length
    sources = [rng.integers(4, vocab, n - 1).tolist() + [EOS] for n in lens[0]]
    targets = [rng.integers(4, vocab, n - 1).tolist() for n in lens[1]]
    return make_batch(sources, targets, device)


# ------------------------------------------------------------------------------------------- steps


def loss_of(logits: torch.Tensor, target_out: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), target_out.flatten(), ignore_index=IGNORE, label_smoothing=0.1)


class Trainer:
    """One optimizer step of a model, written the same way for both sides (AdamW, label smoothing 0.1).

    AdamW is the fused one (one kernel for all parameters, on CPU too), as `mmx-train` uses it.
    """

    def __init__(self, model, forward, env):
        self.model, self.forward, self.env = model, forward, env
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        self.autocast = env.dtype == torch.bfloat16  # fp32 master weights, bf16 matmuls

    def step(self, batch: dict) -> None:
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = loss_of(self.forward(self.model, batch), batch["target_out"])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def mmx_forward(model, batch):
    return model({"src": {"tokens": batch["src"], "mask": batch["mask"]}}, batch["target_in"])


def peer_forward(peer, batch):
    return peer(input_ids=batch["src"], attention_mask=batch["mask"], decoder_input_ids=batch["target_in"]).logits


def cpu_speedups(env) -> bool:
    """Whether the mmxattn side gets apply_cpu_speedups: on CPU, as mmx-train does, unless --no-cpu-speedups."""
    return env.device.type == "cpu" and getattr(env, "cpu_speedups", True)


def make_trainer(side: str, env, dropout: float = 0.1) -> Trainer:
    """mmxattn ("mmxattn") or the peer ("transformers") for training: fp32 master weights (bf16 autocast under
    --dtype bf16), dropout 0.1; mmxattn on CPU with apply_cpu_speedups, as mmx-train builds it."""
    if side == "mmxattn":
        model = common.mmx_model(env.size, dropout=dropout)
        swapped = apply_cpu_speedups(model) if cpu_speedups(env) else 0  # mmx-train: cpu_speedups and accelerator cpu
        trainer = Trainer(model.to(env.device).train(), mmx_forward, env)
        trainer.swapped_dropouts = swapped
        return trainer
    return Trainer(common.peer_model(env.size, dropout=dropout).to(env.device).train(), peer_forward, env)


def speedups_line(env, trainer: Trainer) -> str:
    if cpu_speedups(env):
        return (f"# mmxattn: apply_cpu_speedups applied, as mmx-train does on CPU (cpu_speedups: true): "
                f"{trainer.swapped_dropouts} nn.Dropout -> FastCpuDropout; the peer as transformers ships it")
    why = "--no-cpu-speedups" if env.device.type == "cpu" else f"not on {env.device.type}"
    return f"# mmxattn: plain nn.Dropout (apply_cpu_speedups not applied: {why}); the peer as transformers ships it"


# ------------------------------------------------------------------------------------------- Multi30k


def read_multi30k(root: Path, vocab: int, limit: int | None):
    """Tokenized (en, de) pairs of the Multi30k training split, with a joint SentencePiece model."""
    def lines(lang):
        with gzip.open(root / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            return [line.strip() for line in f][:limit]

    en, de = lines("en"), lines("de")
    tokenizer = Tokenizer.train(en + de, vocab_size=vocab)
    sources = [tokenizer.encode(x) + [EOS] for x in en]
    targets = [tokenizer.encode(y) for y in de]
    return len(tokenizer), sources, targets


def fixed_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n - batch_size + 1, batch_size)]


def padding(batches: list[dict]) -> tuple[float, float]:
    target = 1 - sum(b["useful"] for b in batches) / sum(b["target_slots"] for b in batches)
    source = 1 - sum(b["source_real"] for b in batches) / sum(b["source_slots"] for b in batches)
    return target, source


def multi30k_comparison(args, env) -> dict | None:
    root = Path(args.multi30k)
    if not (root / "train.en.gz").is_file():
        print(f"\n# Multi30k: skipped, no {root}/train.en.gz (pass --multi30k DIR holding train.{{en,de}}.gz)")
        return None
    vocab, sources, targets = read_multi30k(root, env.size.vocab, 2000 if env.quick else None)
    size = common.ModelSize(**{**env.size.__dict__, "vocab": vocab})
    sizes = [max(len(x), len(y) + 1) for x, y in zip(sources, targets)]

    fixed = fixed_batches(len(sources), args.multi30k_batch, seed=1)
    budget = int(np.mean([len(b) * max(sizes[i] for i in b) for b in fixed]))  # the same padded size per step
    bucketed = TokenBudgetBatchSampler(sizes, max_tokens=budget, seed=1).batches()

    def tensors(index_lists):
        return [make_batch([sources[i] for i in b], [targets[i] for i in b], env.device) for b in index_lists]

    fixed_pad, bucket_pad = padding(tensors(fixed)), padding(tensors(bucketed))
    steps = args.multi30k_steps if not env.quick else 2
    # Batches are in random order in both epochs, so the first `steps` are a fair sample of each epoch.
    sample_fixed, sample_bucketed = tensors(fixed[:steps]), tensors(bucketed[:steps])
    env_size, env.size = env.size, size
    trainer = make_trainer("mmxattn", env)
    env.size = env_size
    for batch in sample_fixed[:1] + sample_bucketed[:1]:  # warm-up
        trainer.step(batch)
    seconds = {"fixed": 0.0, "bucketed": 0.0}
    for a, b in zip(sample_fixed, sample_bucketed):  # alternate, so machine load hits both alike
        seconds["fixed"] += common.time_once(lambda: trainer.step(a), env.device)
        seconds["bucketed"] += common.time_once(lambda: trainer.step(b), env.device)
    rate_fixed = sum(b["useful"] for b in sample_fixed) / seconds["fixed"]
    rate_bucketed = sum(b["useful"] for b in sample_bucketed) / seconds["bucketed"]
    print(f"\n# Multi30k en-de train ({len(sources):,} pairs, joint SentencePiece vocabulary {vocab}), "
          f"{steps} steps each; token budget {budget} = mean padded size of the fixed batches")
    print("| batching | sentences/batch (mean) | target padding | source padding | useful target tok/s |")
    print("|---|---:|---:|---:|---:|")
    print(f"| fixed {args.multi30k_batch} sentences, random order | {np.mean([len(b) for b in fixed]):.1f} "
          f"| {100 * fixed_pad[0]:.1f}% | {100 * fixed_pad[1]:.1f}% | {common.fmt_rate(rate_fixed)} |")
    print(f"| token budget, length-bucketed | {np.mean([len(b) for b in bucketed]):.1f} "
          f"| {100 * bucket_pad[0]:.1f}% | {100 * bucket_pad[1]:.1f}% | {common.fmt_rate(rate_bucketed)} |")
    print(f"| ratio | | | | {rate_bucketed / rate_fixed:.2f}× |")
    return dict(fixed=rate_fixed, bucketed=rate_bucketed, ratio=rate_bucketed / rate_fixed,
                fixed_padding=fixed_pad, bucketed_padding=bucket_pad)


def step_comparison(env, batch_size: int, length: int) -> dict:
    """Both training steps on one random batch, each timed right after a matmul-peak reading."""
    ours, peer = make_trainer("mmxattn", env), make_trainer("transformers", env)
    batch = random_batch(batch_size, length, env.size.vocab, env.device)
    runs_ours, runs_peer = common.time_pair_at_peak(
        lambda: ours.step(batch), lambda: peer.step(batch), env, repeats=env.repeats + 2, warmup=env.warmup + 1
    )
    flops = common.training_flops(env.size, batch_size, batch["src"].shape[1], batch["target_in"].shape[1])
    t_ours, t_peer = (statistics.median(t for t, _ in runs) for runs in (runs_ours, runs_peer))
    # each repeat ran mmxattn then the peer: one ratio per adjacent pair, so the spread shows, unfavourable ones included
    pair_ratios = [peer_t / ours_t for (ours_t, _), (peer_t, _) in zip(runs_ours, runs_peer)]
    mfu_ours, mfu_peer = (statistics.median(flops / t / peak for t, peak in runs) for runs in (runs_ours, runs_peer))
    nominal = env.nominal.flops if env.nominal is not None else None
    peaks = [peak for _, peak in runs_ours + runs_peer]
    tokens = batch["useful"]
    print(f"# measured matmul ceiling read before each timed step (fastest of 3 square 2048 fp32 matmuls): "
          f"{min(peaks) / 1e9:,.0f}-{max(peaks) / 1e9:,.0f} GFLOP/s; MFU against it is the median of the per-step ratios")
    if env.nominal is not None:
        print(f"# nominal peak: {env.nominal.text}")
    print(speedups_line(env, ours))
    print(f"\n# training step, batch {batch_size} × {length} tokens, fused AdamW, dropout 0.1, label smoothing 0.1; "
          f"median of {env.repeats + 2} alternating steps")
    print("| | mmxattn | transformers | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| step time (ms) | {1e3 * t_ours:,.0f} | {1e3 * t_peer:,.0f} | {t_peer / t_ours:.2f}× |")
    print(f"| step-time ratio of the {len(pair_ratios)} alternating pairs, minimum / median | | "
          f"| {min(pair_ratios):.2f}× / {statistics.median(pair_ratios):.2f}× |")
    print(f"| target tokens/s | {common.fmt_rate(tokens / t_ours)} | {common.fmt_rate(tokens / t_peer)} | |")
    if nominal is not None:
        print(f"| MFU vs nominal peak ({nominal / 1e9:,.0f} GFLOP/s) | {100 * flops / t_ours / nominal:.1f}% "
              f"| {100 * flops / t_peer / nominal:.1f}% | |")
    print(f"| MFU vs measured matmul ceiling | {100 * mfu_ours:.1f}% | {100 * mfu_peer:.1f}% | |", flush=True)
    print("# every timed step (s): mmxattn " + ", ".join(f"{t:.3g}" for t, _ in runs_ours)
          + "; transformers " + ", ".join(f"{t:.3g}" for t, _ in runs_peer))
    print("# every pair's ratio (transformers step time ÷ mmxattn step time, in the order run): "
          + ", ".join(f"{r:.2f}" for r in pair_ratios)
          + f"; minimum {min(pair_ratios):.2f}, median {statistics.median(pair_ratios):.2f}")
    return dict(step_ours=t_ours, step_peer=t_peer, ratio=t_peer / t_ours, ratio_min=min(pair_ratios),
                ratio_median=statistics.median(pair_ratios), pair_ratios=pair_ratios, mfu=mfu_ours, mfu_peer=mfu_peer,
                mfu_nominal=None if nominal is None else flops / t_ours / nominal,
                mfu_nominal_peer=None if nominal is None else flops / t_peer / nominal,
                speedups=cpu_speedups(env))


# ------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.set_defaults(repeats=5)  # the step ratio is reported as minimum and median over repeats + 2 pairs
    parser.add_argument("--batch", type=int, default=None, help="sentences per step (default 32; cuda 128)")
    parser.add_argument("--length", type=int, default=30, help="source and target tokens per sentence")
    parser.add_argument("--multi30k", default=str(DEFAULT_MULTI30K), help="folder with train.{en,de}.gz")
    parser.add_argument("--multi30k-batch", type=int, default=32, help="sentences per fixed-size batch")
    parser.add_argument("--multi30k-steps", type=int, default=12, help="timed steps per batching")
    parser.add_argument("--no-cpu-speedups", action="store_true",
                        help="train mmxattn with plain nn.Dropout (mmx-train's cpu_speedups=false)")
    args = parser.parse_args(argv)
    env = common.setup(args)
    env.cpu_speedups = not args.no_cpu_speedups
    batch_size = args.batch or (4 if env.quick else 128 if env.device.type == "cuda" else 32)
    length = 8 if env.quick else args.length

    common.header("training efficiency: mmxattn vs transformers (Marian, same size)", env)
    result = step_comparison(env, batch_size, length)  # both models are freed before the Multi30k part
    result["multi30k"] = multi30k_comparison(args, env)
    print(f"# load average (1, 5, 15 min) at end {common.load_average()}")
    return result


if __name__ == "__main__":
    main()
