"""Shared pieces of the side-by-side benchmarks: timing, the measured matmul peak, and the two models.

Every benchmark builds mmxattn and its peer (a Hugging Face transformers Marian model, the usual choice
for this job) at the same size with random weights, feeds both the same inputs in the same process, and
prints both figures and their ratio. Timings alternate between the two sides (A B A B ...) so that load
from other processes on a shared machine hits both alike, and report the median of the repeats.

Sizes follow Transformer-base / Marian: d_model 512, 6 + 6 layers, 8 heads, FFN 2048, vocabulary 8000.
"""

from __future__ import annotations

import argparse
import datetime
import os
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
    return SimpleNamespace(
        device=torch.device(args.device), dtype=dtype, dtype_name=dtype_name, size=SMALL if args.quick else BASE,
        repeats=1 if args.quick else args.repeats, warmup=1, quick=args.quick, keeps_freed_memory=kept,
    )


def hardware() -> str:
    """CPU model and thread count (and the GPU name on cuda), for the tables."""
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    text = f"{model}, {os.cpu_count()} cores, torch {torch.__version__} using {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def header(title: str, env: SimpleNamespace) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {title}")
    print(f"# {datetime.date.today()}  {hardware()}")
    print(f"# device {env.device}, {env.dtype_name}, size {env.size}; load average at start {load:.2f}")
    print(f"# malloc keeps freed memory (mmxattn.cpu_allocator, both sides): {'yes' if env.keeps_freed_memory else 'no'}")


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


def time_pair(
    fn_a: Callable[[], object], fn_b: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1
) -> tuple[float, float]:
    """Median seconds of `fn_a` and of `fn_b`, run alternately (A B A B ...) after `warmup` runs of each."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(time_once(fn_a, device))
        times_b.append(time_once(fn_b, device))
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


def prepare(model: torch.nn.Module, env: SimpleNamespace, *, train: bool = False) -> torch.nn.Module:
    model = model.to(env.device, env.dtype)
    return model.train() if train else model.eval()


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
