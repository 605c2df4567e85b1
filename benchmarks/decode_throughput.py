"""Decoding throughput: mmxattn `EncoderDecoder.generate` against transformers `generate()` and CTranslate2, same model, same inputs.

    python benchmarks/decode_throughput.py                  # CPU fp32, the table in benchmarks/README.md
    python benchmarks/decode_throughput.py --backend eager  # the plain core modules, no inference backend
    python benchmarks/decode_throughput.py --backends cpu int8  # several mmxattn backends in one alternating run
    python benchmarks/decode_throughput.py --no-ct2         # without the CTranslate2 columns
    python benchmarks/decode_throughput.py --device cuda    # GPU: bf16, larger batches
    python benchmarks/decode_throughput.py --quick          # tiny sizes: checks that it runs

mmxattn decodes the way its users do: the model is moved to the device, prepared with
`mmxattn.inference.prepare(model, --backend)` (default auto: the cpu backend on a CPU, eager elsewhere),
and decoded with `model.generate(inputs, GenerationConfig)` under `torch.inference_mode()` (as
mmx-generate does), encoder pass included. Greedy and beam 5 at each batch size, source ~30 tokens,
output length forced on every side (EOS forbidden until the last step: mmxattn `min_len = max_len - 1`,
transformers `min_new_tokens = max_new_tokens`), so all run the same number of decoder steps over the
same rows. Prints generated tokens/s of each, the ratio, and the model FLOP rate of mmxattn's whole
decode as a fraction of the nominal fp32 peak and of the measured matmul ceiling.

CTranslate2 (the `bench` extra; skipped with a message if it is not installed): the very transformers
Marian model the script builds, same random weights, converted with ctranslate2's
`TransformersConverter` machinery (its Marian/BART weight mapping; see `convert_peer_to_ct2`) and loaded
twice, as `ctranslate2.Translator(compute_type=...)` "float32" and "int8" on a CPU (`intra_threads` =
torch's threads, `inter_threads` 1), "bfloat16" and "int8_bfloat16" on a GPU. It decodes the same source
ids (as token strings) with `translate_batch`, encoder included, with the length forced the same way
(`min_decoding_length = max_decoding_length` = new tokens, `end_token=[]`). Every side is timed in turn
(A B C D A B C D ...) and the table gives the median; every timed run is listed under the table.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mmxattn.generation import GenerationConfig  # noqa: E402
from mmxattn.tokenizer import BOS, EOS, PAD, UNK  # noqa: E402


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


# --------------------------------------------------------------------------------------------- CTranslate2


def ct2_vocabulary(size: int) -> list[str]:
    """Token strings for the ids 0 .. size-1 (CTranslate2 takes strings): mmxattn's special tokens, then t4, t5, ..."""
    specials = {PAD: "<pad>", UNK: "<unk>", BOS: "<s>", EOS: "</s>"}
    return [specials.get(i, f"t{i}") for i in range(size)]


class _VocabularyTokenizer:
    """What ctranslate2's transformers loaders read from a tokenizer, for a model with random weights and no tokenizer."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pad_token, self.unk_token, self.bos_token, self.eos_token = (tokens[i] for i in (PAD, UNK, BOS, EOS))

    def get_vocab(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.tokens[i]


def convert_peer_to_ct2(peer, vocabulary: list[str], output_dir: str) -> None:
    """Writes the transformers Marian model `peer` (fp32, on the CPU) as a CTranslate2 model, weights unchanged.

    A `ctranslate2.converters.TransformersConverter` whose `_load` (the step every ctranslate2 converter
    implements) hands the loader this very model object and a tokenizer made of `vocabulary`, instead of
    reading a model and a tokenizer from a directory (the peer has none). The loader is ctranslate2's
    Marian loader (post-norm, no embedding layer norm, sinusoidal positions, the BART weight mapping)
    without the two opus-mt conventions it assumes, which this peer does not follow: opus-mt puts <pad>
    last in the vocabulary and starts the decoder from it, a zero embedding, so the stock loader deletes
    the last row of the embeddings and output projection and starts from zeros; here the last row is a
    real token and the decoder starts from <s> (`decoder_start_token_id`), as in transformers' generate.
    `check_ct2_conversion` compares the converted model's log-probabilities with the peer's.
    """
    from ctranslate2.converters import TransformersConverter
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader

    class SameWeightsMarianLoader(MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False  # what MarianMTLoader sets: post-norm, no embedding layer norm
            model.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, model)  # without MarianMTLoader._remove_pad_weights

        set_decoder = BartLoader.set_decoder  # no start_from_zero_embedding
        get_vocabulary = BartLoader.get_vocabulary  # every token, none dropped
        set_config = BartLoader.set_config  # decoder_start_token = the token of decoder_start_token_id (<s>)

    class PeerConverter(TransformersConverter):
        def _load(self):
            with torch.no_grad():
                return SameWeightsMarianLoader()(peer, _VocabularyTokenizer(vocabulary))

    config = peer.config
    try:
        PeerConverter("benchmark peer (in memory)").convert(output_dir, force=True)  # weights as they are (fp32)
    finally:
        for name in ("normalize_before", "normalize_embedding"):  # leave the peer's config as it was built
            if name in config.__dict__:
                delattr(config, name)


def ct2_compute_types(env) -> tuple[str, str]:
    """(full precision, int8) CTranslate2 compute types: fp32 and int8 on a CPU; on a GPU those of the run's dtype."""
    if env.device.type == "cpu":
        return "float32", "int8"
    return ("bfloat16", "int8_bfloat16") if env.dtype == torch.bfloat16 else ("float32", "int8_float32")


CT2_LABELS = {"float32": "ct2 fp32", "int8": "ct2 int8", "int8_float32": "ct2 int8", "bfloat16": "ct2 bf16",
              "int8_bfloat16": "ct2 int8+bf16"}


class CT2Worker:
    """The CTranslate2 translators, in a process of their own.

    Loaded into this process, ctranslate2 (its own OpenMP runtime and thread pool next to torch's) slowed
    every torch side on a 2-core CPU to 40-60% of its speed (measured 2026-12-01: mmxattn greedy batch 1
    201 -> 86 tok/s, transformers 143 -> 64): a comparison that says more about two runtimes sharing cores
    than about either decoder. So the translators live in a spawned child that never meets torch's threads;
    each timed call sends the batch and waits for the result (a pipe round trip, well under a millisecond,
    is inside CT2's time). The child converts the very same weights: the peer saved with save_pretrained.
    """

    def __init__(self, peer, size: common.ModelSize, env):
        import multiprocessing

        self.device = "cuda" if env.device.type == "cuda" else "cpu"
        self.computes = ct2_compute_types(env)
        self.labels = [CT2_LABELS[c] for c in self.computes]
        self.vocabulary = ct2_vocabulary(size.vocab)
        self.tmp = tempfile.TemporaryDirectory(prefix="mmx_ct2_peer_")
        peer.save_pretrained(self.tmp.name)
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(
            target=_ct2_serve, args=(child, self.tmp.name, self.vocabulary, self.device, self.computes,
                                     torch.get_num_threads()), daemon=True)
        self.process.start()
        status, payload = self.conn.recv()
        if status != "ok":
            self.close()
            raise RuntimeError(payload)
        self.version, self.diffs = payload

    def decode(self, label: str, source: list[list[str]], beam: int, new_tokens: int) -> set[int]:
        self.conn.send(("decode", label, source, beam, new_tokens))
        return self.conn.recv()

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(("stop",))
            self.process.join(timeout=10)
        self.tmp.cleanup()


def _ct2_serve(conn, peer_dir: str, vocabulary: list[str], device: str, computes, threads: int) -> None:
    """The child: convert the saved peer, check the conversion, then decode on request."""
    try:
        import ctranslate2
        from transformers import MarianMTModel

        peer = MarianMTModel.from_pretrained(peer_dir).eval()
        with tempfile.TemporaryDirectory(prefix="mmx_ct2_") as tmp:
            convert_peer_to_ct2(peer, vocabulary, tmp)
            translators = {CT2_LABELS[c]: ctranslate2.Translator(tmp, device=device, compute_type=c, inter_threads=1,
                                                                 intra_threads=threads) for c in computes}
        diffs = check_ct2_conversion(translators, peer, vocabulary, tolerance=1e-3 if device == "cpu" else 5e-2)
        del peer
        conn.send(("ok", (ctranslate2.__version__, diffs)))
    except Exception as error:  # reported by the parent as the reason the CT2 columns are skipped
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        _, label, source, beam, new_tokens = message
        results = ct2_decode(translators[label], source, beam=beam, new_tokens=new_tokens)
        conn.send({len(result.hypotheses[0]) for result in results})


def ct2_worker(peer, size: common.ModelSize, env) -> CT2Worker | None:
    """The CTranslate2 peer in its own process; None (and a line saying why) where it cannot run here."""
    if importlib.util.find_spec("ctranslate2") is None:
        print("# ct2 columns skipped: ctranslate2 is not installed (pip install -e \".[bench]\")")
        return None
    try:
        worker = CT2Worker(peer, size, env)
    except Exception as error:  # e.g. a CUDA build of ctranslate2 that finds no CUDA 12 libraries
        print(f"# ct2 columns skipped: {type(error).__name__}: {error}")
        return None
    computes = ", ".join(f"{label} = compute_type {c!r}" for label, c in zip(worker.labels, worker.computes))
    print(f"# CTranslate2 {worker.version}, in a process of its own (loaded next to torch it slowed the torch sides "
          f"to 40-60%): the transformers peer's weights converted (TransformersConverter, Marian loader without "
          f"the opus-mt pad-row/zero-start conventions); {computes}; device {worker.device}, intra_threads "
          f"{torch.get_num_threads()}, inter_threads 1; translate_batch with min = max decoding length = new "
          f"tokens, end_token=[]; its time includes the pipe round trip")
    print("# conversion check, log-probs of 4 random targets against the fp32 peer's: max |difference| "
          + ", ".join(f"{label} {d:.1e}" for label, d in worker.diffs.items()))
    return worker


def check_ct2_conversion(translators: dict, peer, vocabulary: list[str], *, tolerance: float) -> dict[str, float]:
    """Max |log-prob difference| between each translator and the fp32 peer on random targets (same ids, same
    start token); raises if an fp32 translator is off by more than `tolerance` (a wrong weight mapping)."""
    size = len(vocabulary)
    tokens, mask = common.source_batch(4, 20, size, device="cpu", seed=1)
    target = torch.randint(4, size, (4, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        start = torch.full((4, 1), peer.config.decoder_start_token_id)
        logits = peer(input_ids=tokens, attention_mask=mask, decoder_input_ids=torch.cat([start, target[:, :-1]], 1)).logits
        reference = logits.float().log_softmax(-1).gather(-1, target[..., None])[..., 0]
    source = ct2_source(vocabulary, tokens, mask)
    target_tokens = [[vocabulary[i] for i in row] for row in target.tolist()]
    diffs = {}
    for label, translator in translators.items():
        scored = translator.score_batch(source, target_tokens)  # per token, then the end token's
        got = torch.tensor([result.log_probs[: target.shape[1]] for result in scored])
        diffs[label] = float((got - reference).abs().max())
        if label == "ct2 fp32" and diffs[label] > tolerance:
            raise RuntimeError(f"the fp32 CTranslate2 model differs from the peer (log-probs off by {diffs[label]:.2e})")
    return diffs


def ct2_source(vocabulary: list[str], tokens: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    """The rows of a source batch as token strings, padding left out (the other sides mask it)."""
    return [[vocabulary[i] for i in row[keep].tolist()] for row, keep in zip(tokens.cpu(), mask.cpu())]


def ct2_decode(translator, source: list[list[str]], *, beam: int, new_tokens: int):
    return translator.translate_batch(
        source, beam_size=beam, num_hypotheses=1, length_penalty=1.0, max_batch_size=0,
        min_decoding_length=new_tokens, max_decoding_length=new_tokens, end_token=[], return_scores=False,
    )


# --------------------------------------------------------------------------------------------- measurement


def decode_flops(size: common.ModelSize, mask: torch.Tensor, beam: int, new_tokens: int) -> float:
    """Model FLOPs of one decode: the encoder + context K/V once, then every step over every live row."""
    batch, source_len = mask.shape[0], float(mask.sum(1).float().mean())
    flops = common.encoder_flops_per_token(size, source_len) * batch * source_len
    for step in range(new_tokens):
        flops += common.decoder_flops_per_token(size, step + 1, source_len) * batch * beam
    return flops


def check_same_work(models: dict, peer, ct2: CT2Worker | None, tokens, mask, source, beam: int, new_tokens: int) -> None:
    """Every side must produce exactly `new_tokens` tokens per source, or the comparison is unfair."""
    for backend, model in models.items():
        ours = mmx_decode(model, tokens, mask, beam=beam, new_tokens=new_tokens)
        assert all(len(h[0].tokens) + 1 == new_tokens for h in ours), f"mmxattn ({backend}) did not decode the forced length"
    theirs = peer_decode(peer, tokens, mask, beam=beam, new_tokens=new_tokens)
    assert theirs.shape[1] == new_tokens + 1, f"transformers decoded {theirs.shape[1] - 1} tokens, not {new_tokens}"
    for label in ct2.labels if ct2 else []:
        lengths = ct2.decode(label, source, beam, new_tokens)
        assert lengths == {new_tokens}, f"{label} decoded {sorted(lengths)} tokens, not {new_tokens}"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    common.add_backend_arg(parser)
    parser.add_argument("--backends", nargs="+", default=None, choices=common.inference.BACKENDS,
                        help="several mmxattn backends, timed in the same alternating run (instead of --backend)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 32 (cuda: 1 32 256)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="1 = greedy")
    parser.add_argument("--source-len", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per source (forced)")
    parser.add_argument("--no-ct2", action="store_true", help="leave out the CTranslate2 peer")
    args = parser.parse_args(argv)
    env = common.setup(args)
    batch_sizes = args.batch_sizes or ([1, 4] if env.quick else [1, 32, 256] if env.device.type == "cuda" else [1, 32])
    new_tokens = 8 if env.quick else args.new_tokens
    requested = args.backends or [args.backend]
    names = [common.resolved_backend(b, env) for b in requested]
    if len(set(names)) < len(names):
        parser.error(f"--backends {' '.join(requested)} names a backend twice (auto = {common.resolved_backend('auto', env)})")

    ceiling = common.header("decoding throughput: mmxattn generate vs transformers generate (Marian, same size) "
                            "vs CTranslate2 (the same Marian model)", env, peaks=True)
    base = common.mmx_model(env.size)
    models = {name: common.for_inference(base if len(requested) == 1 else copy.deepcopy(base), env, backend)
              for name, backend in zip(names, requested)}
    peer = common.peer_model(env.size)  # fp32 on the CPU: converted to CTranslate2 as it is, then placed
    ct2 = None if args.no_ct2 else ct2_worker(peer, env.size, env)
    labels = ct2.labels if ct2 else []
    if args.no_ct2:
        print("# ct2 columns left out (--no-ct2)")
    peer = common.place(peer, env)
    prepared = ", ".join(f"inference.prepare(model, {b!r}) -> backend {m.backend}" for b, m in zip(requested, models.values()))
    print(f"# mmxattn: {prepared}; model.generate under inference_mode; {new_tokens} tokens forced, source "
          f"{args.source_len} tokens; median of {env.repeats} alternating repeats\n")

    several = len(names) > 1
    ours_col = {b: f"mmxattn ({b})" for b in names}
    header = (["strategy", "batch"] + [f"{ours_col[b]} tok/s" for b in names] + ["transformers tok/s"]
              + [f"ratio ({b})" if several else "ratio" for b in names]
              + [f"{ours_col[b] if several else 'mmxattn'} % of nominal peak" for b in names]
              + [f"{ours_col[b] if several else 'mmxattn'} % of measured matmul ceiling" for b in names]
              + [f"{label} tok/s" for label in labels])
    int8_label = labels[1] if ct2 else None
    if int8_label:
        header += [f"{ours_col[b]} ÷ {int8_label}" for b in names]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))

    rows = []
    for beam in args.beams:
        for batch in batch_sizes:
            tokens, mask = common.source_batch(batch, args.source_len, env.size.vocab, device=env.device)
            source = ct2_source(ct2.vocabulary, tokens, mask) if ct2 else None
            check_same_work(models, peer, ct2, tokens, mask, source, beam, new_tokens)
            sides = {ours_col[b]: (lambda m=m: mmx_decode(m, tokens, mask, beam=beam, new_tokens=new_tokens))
                     for b, m in models.items()}
            sides["transformers"] = lambda: peer_decode(peer, tokens, mask, beam=beam, new_tokens=new_tokens)
            for label in labels:
                sides[label] = lambda label=label: ct2.decode(label, source, beam, new_tokens)
            runs = dict(zip(sides, common.time_runs(list(sides.values()), env.device, repeats=env.repeats,
                                                    warmup=env.warmup)))
            generated = batch * new_tokens
            speed = {side: generated / statistics.median(times) for side, times in runs.items()}
            flops = decode_flops(env.size, mask, beam, new_tokens)
            per_backend = {}
            for b in names:
                rate = flops * speed[ours_col[b]] / generated
                per_backend[b] = dict(
                    ours=speed[ours_col[b]], ratio=speed[ours_col[b]] / speed["transformers"], flops_per_s=rate,
                    peak_fraction=rate / ceiling, nominal_fraction=None if env.nominal is None else rate / env.nominal.flops,
                    cells=common.peak_fractions(rate, ceiling, env),
                    vs_ct2_int8=speed[ours_col[b]] / speed[int8_label] if int8_label else None,
                )
            first = per_backend[names[0]]
            row = dict(
                strategy="greedy" if beam == 1 else f"beam {beam}", batch=batch, backend=names[0], ours=first["ours"],
                peer=speed["transformers"], ratio=first["ratio"], flops_per_s=first["flops_per_s"],
                peak_fraction=first["peak_fraction"], nominal_fraction=first["nominal_fraction"],
                backends={b: {k: v for k, v in d.items() if k != "cells"} for b, d in per_backend.items()},
                ct2={label: speed[label] for label in labels},
                runs={side: [generated / t for t in times] for side, times in runs.items()},
            )
            rows.append(row)
            cells = ([row["strategy"], str(batch)] + [common.fmt_rate(per_backend[b]["ours"]) for b in names]
                     + [common.fmt_rate(row["peer"])] + [f"{per_backend[b]['ratio']:.2f}×" for b in names]
                     + [per_backend[b]["cells"][0] for b in names] + [per_backend[b]["cells"][1] for b in names]
                     + [common.fmt_rate(speed[label]) for label in labels])
            if int8_label:
                cells += [f"{per_backend[b]['vs_ct2_int8']:.2f}×" for b in names]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\n# every timed run, tok/s in the order run (sides alternate; the table gives the median of {env.repeats}):")
    for row in rows:
        print(f"# {row['strategy']}, batch {row['batch']}: "
              + "; ".join(f"{side} " + ", ".join(common.fmt_rate(x) for x in speeds) for side, speeds in row["runs"].items()))
    print(f"# load average (1, 5, 15 min) at end {common.load_average()}")
    if ct2:
        ct2.close()
    return rows


if __name__ == "__main__":
    main()
