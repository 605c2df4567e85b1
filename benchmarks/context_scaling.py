"""Decoding against long contexts (the audio case): context 100, 750 and 3000 frames.

    python benchmarks/context_scaling.py                  # CPU fp32
    python benchmarks/context_scaling.py --device cuda    # GPU bf16
    python benchmarks/context_scaling.py --quick          # tiny sizes: checks that it runs

The decoder reads ready-made context states (as an audio encoder would hand them over), so only the
decoding is timed, on both sides: mmxattn's search (`mmxattn.generation.generate`, what
`EncoderDecoder.generate` runs after encoding) on the decoder of a model prepared with
`mmxattn.inference.prepare(model, --backend)` (default auto = cpu on a CPU), and transformers
`generate(encoder_outputs=...)`.
Shows that a decoder step does not re-project the context: the one-off projection of the context into
every layer's cross-attention keys/values is timed on its own and set against the per-step cost
(step = (decode - projection) / steps). Were the context re-projected at every step, each step would cost
at least that projection.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mmxattn.context import Context  # noqa: E402
from mmxattn.generation import GenerationConfig, generate  # noqa: E402


def random_context(batch: int, frames: int, dim: int, env, seed: int = 0) -> Context:
    """Encoder-output-like states [B, S, D] with a mask; every other row 10% shorter (padding)."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, frames, dim, generator=gen)
    mask = torch.ones(batch, frames, dtype=torch.bool)
    mask[1::2, int(0.9 * frames) :] = False
    return Context(states.to(env.device, env.dtype), mask.to(env.device))


def generation_config(beam: int, new_tokens: int) -> GenerationConfig:
    return GenerationConfig(strategy="greedy" if beam == 1 else "beam", beam_size=beam, max_len=new_tokens,
                            min_len=new_tokens - 1)


def mmx_decode(decoder, context: Context, beam: int, new_tokens: int):
    with torch.inference_mode():
        return generate(decoder, context, generation_config(beam, new_tokens))


def mmx_project(decoder, context: Context):
    with torch.inference_mode():
        return decoder.start(context)


def peer_decode(peer, context: Context, beam: int, new_tokens: int):
    from transformers.modeling_outputs import BaseModelOutput

    with torch.inference_mode():
        return peer.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=context.states), attention_mask=context.mask,
            num_beams=beam, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
        )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    common.add_backend_arg(parser)
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 750, 3000], help="context lengths")
    parser.add_argument("--batch", type=int, default=None, help="sources per decode (default 4; cuda 32)")
    parser.add_argument("--beam", type=int, default=5, help="1 = greedy")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    env = common.setup(args)
    batch = args.batch or (2 if env.quick else 32 if env.device.type == "cuda" else 4)
    frames = [20, 60] if env.quick else args.frames
    new_tokens = 6 if env.quick else args.new_tokens

    common.header("context-length scaling of decoding: mmxattn vs transformers (Marian, same size)", env)
    model = common.for_inference(common.mmx_model(env.size), env, args.backend)
    peer = common.place(common.peer_model(env.size), env)
    strategy = "greedy" if args.beam == 1 else f"beam {args.beam}"
    print(f"# {strategy}, batch {batch}, {new_tokens} tokens forced; context states given (decoder only); mmxattn "
          f"backend {model.backend} (inference.prepare(model, {args.backend!r})); median of {env.repeats} alternating "
          f"repeats\n")
    print(f"| context frames | mmxattn ({model.backend}) tok/s | transformers tok/s | ratio | mmxattn step (ms) "
          "| context projection, once (ms) | projection ÷ step |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for n_frames in frames:
        context = random_context(batch, n_frames, env.size.d_model, env)
        ours, theirs = common.time_pair(
            lambda: mmx_decode(model.decoder, context, args.beam, new_tokens),
            lambda: peer_decode(peer, context, args.beam, new_tokens),
            env.device, repeats=env.repeats, warmup=env.warmup,
        )
        project = common.time_median(lambda: mmx_project(model.decoder, context), env.device,
                                     repeats=max(3, env.repeats), warmup=1)
        step = (ours - project) / new_tokens
        row = dict(frames=n_frames, ours=batch * new_tokens / ours, peer=batch * new_tokens / theirs,
                   ratio=theirs / ours, step_ms=1e3 * step, project_ms=1e3 * project)
        rows.append(row)
        print(f"| {n_frames} | {common.fmt_rate(row['ours'])} | {common.fmt_rate(row['peer'])} | {row['ratio']:.2f}× "
              f"| {row['step_ms']:.1f} | {row['project_ms']:.1f} | {project / step:.2f} |", flush=True)
    first, last = rows[0], rows[-1]
    print(f"\n# context ×{last['frames'] / first['frames']:.0f} ({first['frames']} → {last['frames']} frames): "
          f"mmxattn step ×{last['step_ms'] / first['step_ms']:.2f}, one-off projection ×"
          f"{last['project_ms'] / first['project_ms']:.1f}; re-projecting per step would make a step "
          f"{(last['step_ms'] + last['project_ms']) / last['step_ms']:.1f}× as long at {last['frames']} frames")
    print(f"# load average (1, 5, 15 min) at end {common.load_average()}")
    return rows


if __name__ == "__main__":
    main()
