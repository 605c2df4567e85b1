"""Shared pieces of the side-by-side benchmarks: timing, the two peaks (nominal and measured), the two models.

Every benchmark builds mmxattn and its peer (a Hugging Face transformers Marian model, the usual choice
for this job) at the same size with random weights, feeds both the same inputs in the same process, and
prints both figures and their ratio. Timings alternate between the two sides (A B A B ...) so that load
from other processes on a shared machine hits both alike, and report the median of the repeats.

mmxattn is used the way its users get it: decoding through `EncoderDecoder.generate` on a model prepared
with an inference backend (`mmxattn.inference.prepare`, `--backend`, default auto = cpu on a CPU), and
training on CPU with `mmxattn.training.cpu_speedups.apply_cpu_speedups`, as `mmx-train` applies it.

Utilisation is given against two peaks, both labelled: the CPU's nominal fp32 FMA peak (cores × clock ×
FLOPs per cycle, from lscpu; `nominal_peak` says what it assumed) and the measured matmul ceiling (the
fastest of a few large square fp32 matmuls in the same run).

Sizes follow Transformer-base / Marian: d_model 512, 6 + 6 layers, 8 heads, FFN 2048, vocabulary 8000.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch

from mmxattn import inference
from mmxattn.cpu_allocator import keep_freed_memory
from mmxattn.model import EncoderDecoder, build_model
from mmxattn.tokenizer import BOS, EOS, PAD


@dataclass(frozen=True)
class ModelSize:
    d_model: int = 512
    layers: int = 6  # encoder and decoder each
    heads: int = 8
    ffn: int = 2048
    vocab: int = 8000


BASE = ModelSize()
SMALL = ModelSize(d_model=128, layers=2, heads=4, ffn=512, vocab=1000)  # --quick: a smoke run in seconds


# --------------------------------------------------------------------------------------------- set-up


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: bf16 and larger batches by default)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the benchmark machine has 2 cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes: checks the script runs, not speed")
    parser.add_argument("--clock-ghz", type=float, default=None,
                        help="core clock for the nominal peak (default: lscpu's max MHz, else /proc/cpuinfo's cpu MHz)")
    parser.add_argument("--fma-units", type=int, default=2,
                        help="vector FMA units per core for the nominal peak (Xeon Scalable with AVX-512: 2)")


def setup(args: argparse.Namespace) -> SimpleNamespace:
    """Fix threads, seed and malloc settings; resolve device, dtype and model size from the command line.

    The malloc settings are the ones every mmx-* command uses (`keep_freed_memory`); they hold for the
    whole process, so the peer runs with them too (its training step gains more from them than ours).
    """
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    torch.manual_seed(0)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
    dtype_name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device(args.device)
    return SimpleNamespace(
        device=device, dtype=dtype, dtype_name=dtype_name, size=SMALL if args.quick else BASE,
        repeats=1 if args.quick else args.repeats, warmup=1, quick=args.quick, keeps_freed_memory=kept,
        nominal=nominal_peak(dtype, clock_ghz=args.clock_ghz, fma_units=args.fma_units)
        if device.type == "cpu" else None,
    )


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def _cpuinfo_mhz() -> float | None:
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", f.read(), re.M)
        return float(found.group(1)) if found else None
    except OSError:
        return None


def nominal_peak(dtype: torch.dtype, *, clock_ghz: float | None = None, fma_units: int = 2,
                 threads: int | None = None) -> SimpleNamespace | None:
    """The CPU's nominal peak for the threads in use: cores × clock × FLOPs per cycle, with its assumptions.

    FLOPs per cycle per core = FMA units × fp32 lanes per vector × 2 (an FMA is a multiply and an add):
    AVX-512 2 × 16 × 2 = 64, AVX2 2 × 8 × 2 = 32. Sapphire Rapids Xeons have two 512-bit FMA units per
    core (ports 0 and 5); `--fma-units` changes the assumption. The clock is lscpu's "CPU max MHz" where
    the machine shows it, else the "cpu MHz" of /proc/cpuinfo (in a VM usually the base/TSC clock, not
    the turbo clock, so a core can run above this peak). fp32 only: the AMX tiles (bf16/int8) are not
    counted, and bf16 gets no nominal figure. Cores: the threads in use, at most the cores lscpu lists.
    """
    if dtype != torch.float32:
        return None
    info = _lscpu()
    flags = set(info.get("Flags", "").split())
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else None
    if lanes is None:
        return None
    cores_listed = int(info.get("Core(s) per socket", "1")) * int(info.get("Socket(s)", "1"))
    cores = min(threads or torch.get_num_threads(), cores_listed)
    source = "--clock-ghz"
    if clock_ghz is None:
        if info.get("CPU max MHz"):
            clock_ghz, source = float(info["CPU max MHz"]) / 1e3, "lscpu CPU max MHz"
        elif _cpuinfo_mhz():
            clock_ghz, source = _cpuinfo_mhz() / 1e3, "/proc/cpuinfo cpu MHz (base/TSC clock; lscpu shows no max MHz)"
        else:
            return None
    per_cycle = fma_units * lanes * 2
    flops = cores * clock_ghz * 1e9 * per_cycle
    isa = "AVX-512" if lanes == 16 else "AVX2"
    text = (f"{flops / 1e9:,.1f} GFLOP/s = {cores} cores × {clock_ghz:.2f} GHz ({source}) × {per_cycle} fp32 "
            f"FLOP/cycle ({isa}: assumed {fma_units} FMA units × {lanes} lanes × 2)")
    return SimpleNamespace(flops=flops, per_core=flops / cores, cores=cores, clock_ghz=clock_ghz,
                           per_cycle=per_cycle, text=text)


def hardware() -> str:
    """CPU model, its vector extensions and thread count (and the GPU name on cuda), for the tables."""
    info = _lscpu()
    model = info.get("Model name") or platform.processor() or "unknown CPU"
    flags = set(info.get("Flags", "").split())
    isa = [name for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AMX", "amx_tile")) if flag in flags]
    if "AVX-512" in isa and "AVX2" in isa:
        isa.remove("AVX2")
    if info.get("CPU family") and info.get("Model"):
        isa.insert(0, f"family {info['CPU family']} model {info['Model']}")
    if isa:
        model += f" ({', '.join(isa)})"
    text = f"{model}, {os.cpu_count()} cores, torch {torch.__version__} using {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def add_backend_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=inference.BACKENDS,
                        help="mmxattn inference backend (mmxattn.inference.prepare); auto = cpu on a CPU, eager elsewhere")


def resolved_backend(backend: str, env: SimpleNamespace) -> str:
    return inference.default_backend(env.device) if backend == "auto" else backend


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def header(title: str, env: SimpleNamespace, *, peaks: bool = False) -> float | None:
    """Prints the run's header; with peaks=True also both peaks, and returns the measured matmul ceiling."""
    print(f"# {title}")
    print(f"# {datetime.date.today()}  {hardware()}")
    print(f"# device {env.device}, {env.dtype_name}, size {env.size}; load average (1, 5, 15 min) at start {load_average()}")
    print(f"# malloc keeps freed memory (mmxattn.cpu_allocator, both sides): {'yes' if env.keeps_freed_memory else 'no'}")
    if not peaks:
        return None
    ceiling = matmul_peak(env.device, env.dtype)
    print(f"# measured matmul ceiling: {ceiling / 1e9:,.1f} GFLOP/s (fastest of 10 square fp32 matmuls, "
          f"{torch.get_num_threads()} threads)")
    if env.nominal is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        one = matmul_peak(env.device, env.dtype)
        torch.set_num_threads(threads)
        print(f"# nominal peak: {env.nominal.text}")
        print(f"# (one thread's matmul reads {one / 1e9:,.1f} GFLOP/s = {100 * one / env.nominal.per_core:.0f}% of one "
              f"core's nominal {env.nominal.per_core / 1e9:,.1f}: above 100% means the core clocks higher than assumed)")
    else:
        print("# nominal peak: not stated (only for fp32 on x86 CPUs with AVX2/AVX-512)")
    return ceiling


def peak_fractions(flops_per_s: float, ceiling: float, env: SimpleNamespace) -> tuple[str, str]:
    """(% of the nominal peak, % of the measured matmul ceiling) as table cells."""
    nominal = "n/a" if env.nominal is None else f"{100 * flops_per_s / env.nominal.flops:.1f}%"
    return nominal, f"{100 * flops_per_s / ceiling:.1f}%"


# --------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_runs(fns: list[Callable[[], object]], device: torch.device, *, repeats: int, warmup: int = 1
              ) -> list[list[float]]:
    """Seconds of every timed run of each function, run in turn (A B C A B C ...) after `warmup` runs of each."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, runs):
            times.append(time_once(fn, device))
    return runs


def time_pair(
    fn_a: Callable[[], object], fn_b: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1
) -> tuple[float, float]:
    """Median seconds of `fn_a` and of `fn_b`, run alternately (A B A B ...) after `warmup` runs of each."""
    times_a, times_b = time_runs([fn_a, fn_b], device, repeats=repeats, warmup=warmup)
    return statistics.median(times_a), statistics.median(times_b)


def time_pair_at_peak(
    fn_a: Callable[[], object], fn_b: Callable[[], object], env: SimpleNamespace, *, repeats: int, warmup: int = 1
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Like `time_pair`, with a matmul-peak reading taken right before each timed run: (seconds, peak) lists.

    For utilisation figures. This machine's peak reading moves between 120 and 200 GFLOP/s within a
    minute (other tenants, clock boost), so a ratio of a step time to a peak read a minute apart says
    more about that drift than about the step; a reading just before each step tracks it.
    """
    for _ in range(warmup):
        fn_a()
        fn_b()
    runs_a, runs_b = [], []
    for _ in range(repeats):
        for fn, runs in ((fn_a, runs_a), (fn_b, runs_b)):
            peak = matmul_peak(env.device, env.dtype, repeats=3)
            runs.append((time_once(fn, env.device), peak))
    return runs_a, runs_b


def time_median(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn, device) for _ in range(repeats))


def matmul_peak(device: torch.device, dtype: torch.dtype, *, n: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul (2·n³ FLOPs), the practical peak the model's matmuls can reach.

    The fastest of the repeats, not the median: a peak is what the hardware does when nothing else runs,
    and on a shared machine the median of short runs reads low (fractions of it above 100% follow).
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    seconds = min(time_once(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / seconds


# --------------------------------------------------------------------------------------------- models


class _Vocabulary:
    """Stands in for a SentencePiece tokenizer where only the vocabulary size matters (random weights)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def mmx_model(size: ModelSize, *, dropout: float = 0.0) -> EncoderDecoder:
    """The `text` encoder plugin + the shared TransformerDecoder, built the way mmx-train builds them."""
    layer = dict(d_model=size.d_model, num_layers=size.layers, num_heads=size.heads, ffn_dim=size.ffn, dropout=dropout)
    cfg = {"encoder": {"name": "text", **layer}, "decoder": {**layer, "attn_dropout": 0.0, "tie_embeddings": True}}
    vocab = _Vocabulary(size.vocab)
    return build_model(cfg, SimpleNamespace(source=vocab, target=vocab))


def peer_model(size: ModelSize, *, dropout: float = 0.0):
    """A Hugging Face MarianMTModel of the same size (random weights; special ids as in mmxattn).

    Like mmxattn's text encoder + decoder: separate source and target embeddings, the target one tied to
    the output projection; dropout on the same tensors (sublayer outputs, embeddings, FFN hidden units).
    """
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(
        vocab_size=size.vocab, d_model=size.d_model, encoder_layers=size.layers, decoder_layers=size.layers,
        encoder_attention_heads=size.heads, decoder_attention_heads=size.heads,
        encoder_ffn_dim=size.ffn, decoder_ffn_dim=size.ffn, max_position_embeddings=4096,
        dropout=dropout, attention_dropout=0.0, activation_dropout=dropout, activation_function="gelu",
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, decoder_start_token_id=BOS, forced_eos_token_id=None,
        scale_embedding=True, share_encoder_decoder_embeddings=False, tie_word_embeddings=True,
    )
    model = MarianMTModel(cfg)
    # Decoding settings are given per call; no peer-side extras (no bad-word lists, no forced tokens).
    model.generation_config.bad_words_ids = None
    model.generation_config.forced_eos_token_id = None
    model.generation_config.max_length = None
    return model


def place(model: torch.nn.Module, env: SimpleNamespace, *, train: bool = False) -> torch.nn.Module:
    """The model on the run's device and dtype, in train or eval mode (the peer, or mmxattn before a backend)."""
    model = model.to(env.device, env.dtype)
    return model.train() if train else model.eval()


def for_inference(model: EncoderDecoder, env: SimpleNamespace, backend: str = "auto") -> EncoderDecoder:
    """What a user decodes with: the model moved to the device, then `mmxattn.inference.prepare(model, backend)`."""
    return inference.prepare(place(model, env), backend)


def source_batch(batch: int, length: int, vocab: int, *, device, seed: int = 0, ragged: bool = True):
    """Random source ids [B, length] with a mask; rows shortened by up to 20% (right padding) if ragged."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, vocab, (batch, length), generator=gen)
    if ragged and batch > 1:
        lengths = torch.randint(int(length * 0.8), length + 1, (batch,), generator=gen)
        lengths[0] = length
        for row, n in enumerate(lengths.tolist()):
            tokens[row, n - 1] = EOS
            tokens[row, n:] = PAD
    else:
        tokens[:, -1] = EOS
    return tokens.to(device), (tokens != PAD).to(device)


# --------------------------------------------------------------------------------------------- FLOPs


def decoder_flops_per_token(size: ModelSize, self_len: float, context_len: float) -> float:
    """Forward FLOPs of one decoder position: matmuls (2 per multiply-add) and attention over the keys.

    Self-attention QKV + out (4·D²), cross-attention Q + out (2·D²; its K/V come from the context once),
    FFN (2·D·F), the output projection (D·V); attention scores and mixing (2·2·D per key).
    """
    d, f, v = size.d_model, size.ffn, size.vocab
    per_layer = 2 * (6 * d * d + 2 * d * f) + 4 * d * (self_len + context_len)
    return size.layers * per_layer + 2 * d * v


def encoder_flops_per_token(size: ModelSize, source_len: float) -> float:
    """Forward FLOPs of one encoder position, plus the decoder's cross-attention K/V projection of it."""
    d, f = size.d_model, size.ffn
    per_layer = 2 * (4 * d * d + 2 * d * f) + 4 * d * source_len
    return size.layers * (per_layer + 2 * 2 * d * d)


def training_flops(size: ModelSize, batch: int, source_len: int, target_len: int) -> float:
    """FLOPs of one training step over padded [batch, length] tensors: forward + backward = 3 × forward."""
    enc = encoder_flops_per_token(size, source_len) * batch * source_len
    # Causal self-attention: the kernels compute the full T×T square, so count what runs (as PaLM does).
    dec = decoder_flops_per_token(size, target_len, source_len) * batch * target_len
    return 3 * (enc + dec)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"
