"""Decoding throughput: mmxattn `EncoderDecoder.generate` against transformers `generate()`, same model size, same inputs.

    python benchmarks/decode_throughput.py                  # CPU fp32, the table in benchmarks/README.md
    python benchmarks/decode_throughput.py --backend eager  # the plain core modules, no inference backend
    python benchmarks/decode_throughput.py --device cuda    # GPU: bf16, larger batches
    python benchmarks/decode_throughput.py --quick          # tiny sizes: checks that it runs

mmxattn decodes the way its users do: the model is moved to the device, prepared with
`mmxattn.inference.prepare(model, --backend)` (default auto: the cpu backend on a CPU, eager elsewhere),
and decoded with `model.generate(inputs, GenerationConfig)` under `torch.inference_mode()` (as
mmx-generate does), encoder pass included. Greedy and beam 5 at each batch size, source ~30 tokens,
output length forced on both sides (EOS forbidden until the last step: mmxattn `min_len = max_len - 1`,
transformers `min_new_tokens = max_new_tokens`), so both run the same number of decoder steps over the
same rows. Prints generated tokens/s of each, the ratio, and the model FLOP rate of mmxattn's whole
decode as a fraction of the nominal fp32 peak and of the measured matmul ceiling.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mmxattn.generation import GenerationConfig  # noqa: E402


def generation_config(beam: int, new_tokens: int) -> GenerationConfig:
    return GenerationConfig(strategy="greedy" if beam == 1 else "beam", beam_size=beam, max_len=new_tokens,
                            min_len=new_tokens - 1)


def mmx_decode(model, tokens, mask, *, beam: int, new_tokens: int):
    with torch.inference_mode():
        return model.generate({"src": {"tokens": tokens, "mask": mask}}, generation_config(beam, new_tokens))


def peer_decode(peer, tokens, mask, *, beam: int, new_tokens: int):
    with torch.inference_mode():
        return peer.generate(
            input_ids=tokens, attention_mask=mask, num_beams=beam, do_sample=False,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, length_penalty=1.0, use_cache=True,
        )


def decode_flops(size: common.ModelSize, mask: torch.Tensor, beam: int, new_tokens: int) -> float:
    """Model FLOPs of one decode: the encoder + context K/V once, then every step over every live row."""
    batch, source_len = mask.shape[0], float(mask.sum(1).float().mean())
    flops = common.encoder_flops_per_token(size, source_len) * batch * source_len
    for step in range(new_tokens):
        flops += common.decoder_flops_per_token(size, step + 1, source_len) * batch * beam
    return flops


def check_same_work(model, peer, tokens, mask, beam: int, new_tokens: int) -> None:
    """Both sides must produce exactly `new_tokens` tokens per source, or the comparison is unfair."""
    ours = mmx_decode(model, tokens, mask, beam=beam, new_tokens=new_tokens)
    theirs = peer_decode(peer, tokens, mask, beam=beam, new_tokens=new_tokens)
    assert all(len(h[0].tokens) + 1 == new_tokens for h in ours), "mmxattn did not decode the forced length"
    assert theirs.shape[1] == new_tokens + 1, f"transformers decoded {theirs.shape[1] - 1} tokens, not {new_tokens}"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    common.add_backend_arg(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 32 (cuda: 1 32 256)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="1 = greedy")
    parser.add_argument("--source-len", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per source (forced)")
    args = parser.parse_args(argv)
    env = common.setup(args)
    batch_sizes = args.batch_sizes or ([1, 4] if env.quick else [1, 32, 256] if env.device.type == "cuda" else [1, 32])
    new_tokens = 8 if env.quick else args.new_tokens
    backend = common.resolved_backend(args.backend, env)

    ceiling = common.header("decoding throughput: mmxattn generate vs transformers generate (Marian, same size)", env,
                            peaks=True)
    model = common.for_inference(common.mmx_model(env.size), env, args.backend)
    peer = common.place(common.peer_model(env.size), env)
    print(f"# mmxattn: inference.prepare(model, {args.backend!r}) -> backend {model.backend}; model.generate under "
          f"inference_mode; {new_tokens} tokens forced, source {args.source_len} tokens; median of {env.repeats} "
          f"alternating repeats\n")

    rows = []
    print(f"| strategy | batch | mmxattn ({backend}) tok/s | transformers tok/s | ratio "
          "| mmxattn % of nominal peak | mmxattn % of measured matmul ceiling |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for beam in args.beams:
        for batch in batch_sizes:
            tokens, mask = common.source_batch(batch, args.source_len, env.size.vocab, device=env.device)
            check_same_work(model, peer, tokens, mask, beam, new_tokens)
            ours, theirs = common.time_pair(
                lambda: mmx_decode(model, tokens, mask, beam=beam, new_tokens=new_tokens),
                lambda: peer_decode(peer, tokens, mask, beam=beam, new_tokens=new_tokens),
                env.device, repeats=env.repeats, warmup=env.warmup,
            )
            generated = batch * new_tokens
            rate = decode_flops(env.size, mask, beam, new_tokens) / ours
            nominal, measured = common.peak_fractions(rate, ceiling, env)
            row = dict(
                strategy="greedy" if beam == 1 else f"beam {beam}", batch=batch, backend=backend, ours=generated / ours,
                peer=generated / theirs, ratio=theirs / ours, flops_per_s=rate, peak_fraction=rate / ceiling,
                nominal_fraction=None if env.nominal is None else rate / env.nominal.flops,
            )
            rows.append(row)
            print(
                f"| {row['strategy']} | {batch} | {common.fmt_rate(row['ours'])} | {common.fmt_rate(row['peer'])} "
                f"| {row['ratio']:.2f}× | {nominal} | {measured} |",
                flush=True,
            )
    print(f"# load average (1, 5, 15 min) at end {common.load_average()}")
    return rows


if __name__ == "__main__":
    main()
