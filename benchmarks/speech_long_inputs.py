"""Long audio inputs: peak memory and time of one training step and one beam-search decode at 5, 15, 30 s.

    python benchmarks/speech_long_inputs.py                     # CPU, s2t_transformer_s size, batch of 2
    python benchmarks/speech_long_inputs.py --device cuda --batch-size 16

The model is the size the CoVoST/MuST-C recipes train (fairseq s2t_transformer_s: 12 encoder + 6 decoder
layers of width 256, 1024-channel conv subsampler, vocabulary 8000). Inputs are 100 feature frames per
second (30 s = 3000 frames -> 750 encoder positions after the 4x subsampler) of random features; the
feature extraction itself (Kaldi fbank of a waveform of that length) is timed separately.

Each length runs in a fresh subprocess, so its peak resident memory (CPU) or peak allocated memory
(CUDA) is its own. Times are medians over --repeats after one warm-up; on a shared machine, read them as
rough. Decoding is beam search (beam 5) forced to exactly --decode-tokens tokens, so that every length
does the same decoder work and the difference is the cross-attention context.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from mmxattn.decoder import TransformerDecoder
from mmxattn.generation import GenerationConfig, generate
from mmxattn.model import EncoderDecoder
from mmxattn_encoders.audio import AudioEncoder, AudioProcessor, log_mel_fbank

SECONDS = (5, 15, 30)


def build(vocab: int = 8000) -> EncoderDecoder:
    encoder = AudioEncoder()  # defaults = conf/encoder/audio.yaml = s2t_transformer_s encoder
    decoder = TransformerDecoder(vocab_size=vocab, d_model=256, num_layers=6, num_heads=4, ffn_dim=2048,
                                 tie_embeddings=False)
    return EncoderDecoder({"src": encoder}, decoder)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_one(seconds: int, args) -> dict:
    """Runs in its own process: build, train steps, decodes; returns times and this process's peak memory."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    frames, batch_size = 100 * seconds, args.batch_size

    waveform = torch.randn(16000 * seconds) * 0.1
    fbank_s = timed(lambda: log_mel_fbank(waveform, 16000, 80), torch.device("cpu"), args.repeats)

    model = build().to(device)
    processor = AudioProcessor()
    batch = processor.collate([torch.randn(frames - 7 * i, 80) for i in range(batch_size)])  # slightly unequal
    batch = {k: v.to(device) for k, v in batch.items()}
    target = torch.randint(4, 8000, (batch_size, 40), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def train_step():
        model.train()
        with autocast:
            logits = model({"src": batch}, target[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    gen = GenerationConfig(strategy="beam", beam_size=5, min_len=args.decode_tokens - 1, max_len=args.decode_tokens)

    def decode():
        model.eval()
        with torch.inference_mode(), autocast:
            generate(model.decoder, model.encode({"src": batch}), gen)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(train_step, device, args.repeats)
    decode_s = timed(decode, device, args.repeats)
    positions = int(model.encoders["src"].subsample.output_lengths(torch.tensor([frames]))[0])
    peak_mib = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20  # ru_maxrss is KiB on Linux
    return {"seconds": seconds, "frames": frames, "positions": positions, "batch": batch_size,
            "fbank_ms": 1000 * fbank_s, "train_step_s": train_s, "decode_s": decode_s, "peak_mib": peak_mib,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure this length only
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args)))
        return

    rows = []
    for seconds in SECONDS:
        command = [sys.executable, __file__, "--one", str(seconds)] + [
            a for a in sys.argv[1:] if not a.startswith("--one")]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{seconds} s failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    memory = "peak allocated (CUDA)" if args.device.startswith("cuda") else "peak RSS (process)"
    print(f"# speech_long_inputs: {rows[0]['params_m']:.1f}M-parameter s2t_transformer_s-size model, batch of "
          f"{args.batch_size}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
          f"{platform.processor() or platform.machine()}, {datetime.date.today()}")
    print(f"| input | frames -> positions | fbank / utterance | train step (fwd+bwd+AdamW) | "
          f"beam-5 decode, {args.decode_tokens} tokens | {memory} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seconds']} s | {r['frames']} -> {r['positions']} | {r['fbank_ms']:.0f} ms | "
              f"{r['train_step_s']:.2f} s | {r['decode_s']:.2f} s | {r['peak_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
