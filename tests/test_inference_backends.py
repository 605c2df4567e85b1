"""Decoding must give exactly what a straightforward decoder gives, with every inference backend.

The reference decoders below take no shortcuts: every step re-runs the full teacher-forced forward pass
over the whole prefix (no key/value cache), every beam gets its own copy of the context (no sharing),
each source is decoded on its own (no batching, no dropping of finished rows), in plain Python. The
eager core, the cpu backend (packed weights, row blocks, the flattened step) and the compile backend
must all decode their tokens.
"""

import copy
import shutil

import pytest
import torch
from torch import nn

from mmxattn.context import Context
from mmxattn.decoder import TransformerDecoder
from mmxattn.generation import GenerationConfig, generate
from mmxattn.inference import cpu, prepare
from mmxattn.tokenizer import BOS, EOS, PAD

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

VOCAB = 48


needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None, reason="torch.compile on CPU needs a C++ compiler"
)


class Holder(nn.Module):
    """What `prepare` expects: a model with a `decoder` (the encoders play no part here)."""

    def __init__(self, decoder: TransformerDecoder):
        super().__init__()
        self.decoder = decoder


def prepared(decoder: TransformerDecoder, backend: str) -> TransformerDecoder:
    """A copy of `decoder` with `backend` applied (the reference keeps the plain one)."""
    return prepare(Holder(copy.deepcopy(decoder)), backend).decoder


@pytest.fixture(params=["eager", "cpu", "cpu-row-blocks"])
def backend(request, monkeypatch):
    monkeypatch.setattr(cpu, "PACKING_MIN_WEIGHTS", 0)  # the tiny weights take the layouts big ones take
    if request.param == "cpu-row-blocks":  # the single-row kernel that differs most from F.linear, whatever is fastest here
        monkeypatch.setattr(cpu, "fastest_single_row_kernel", lambda layer: "row_blocks")
        return "cpu"
    return request.param


def tiny_decoder_and_context() -> tuple[TransformerDecoder, Context]:
    """A 2-layer decoder in eval mode and 8 contexts of 7 positions, most of them padded."""
    torch.manual_seed(0)
    decoder = TransformerDecoder(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, ffn_dim=64, dropout=0.0)
    with torch.no_grad():  # make EOS likely enough that hypotheses end at different steps
        decoder.embed.weight[EOS] *= 1.7
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5, [True] * 6 + [False]] * 2)
    return decoder.eval(), Context(torch.randn(8, 7, 32), mask)


def constrained_logp(decoder, prefix: list[int], context: Context, step: int, cfg: GenerationConfig):
    """log p(next | prefix) for each row of a [rows, t] prefix batch, with generation's length rules."""
    with torch.no_grad():
        logits = decoder(torch.tensor(prefix), context)[0][:, -1]  # full forward over the prefix
    logp = logits.log_softmax(-1)
    logp[:, [PAD, BOS]] = float("-inf")
    if step < cfg.min_len:
        logp[:, EOS] = float("-inf")
    if step == cfg.max_len - 1:
        keep = logp[:, EOS].clone()
        logp[:] = float("-inf")
        logp[:, EOS] = keep
    return logp


def reference_greedy(decoder, context: Context, cfg: GenerationConfig) -> list[list[int]]:
    out = []
    for i in range(context.states.shape[0]):
        source = Context(context.states[i : i + 1], context.mask[i : i + 1])
        tokens = []
        for step in range(cfg.max_len):
            token = int(constrained_logp(decoder, [[BOS] + tokens], source, step, cfg)[0].argmax())
            if token == EOS:
                break
            tokens.append(token)
        out.append(tokens)
    return out


def reference_beam(decoder, context: Context, cfg: GenerationConfig) -> list[list[tuple[list[int], float]]]:
    """Per-source beam search with the same rules as `generate` (fairseq-style finishing), no shortcuts."""
    k, results = cfg.beam_size, []
    for i in range(context.states.shape[0]):
        beams, finished = [([], 0.0)], []
        for step in range(cfg.max_len):
            copies = Context(context.states[i : i + 1].repeat(len(beams), 1, 1), context.mask[i : i + 1].repeat(len(beams), 1))
            logp = constrained_logp(decoder, [[BOS] + b for b, _ in beams], copies, step, cfg)
            cand = (torch.tensor([s for _, s in beams])[:, None] + logp).flatten()
            scores, index = cand.topk(2 * k)
            next_beams = []
            for rank, (score, flat) in enumerate(zip(scores.tolist(), index.tolist())):
                parent, token = divmod(flat, VOCAB)
                if token == EOS:
                    if rank < k and score > float("-inf") and len(finished) < k:
                        finished.append((beams[parent][0], score / (step + 1) ** cfg.length_penalty))
                elif len(next_beams) < k:
                    next_beams.append((beams[parent][0] + [token], score))
            if len(finished) >= k:
                break
            beams = next_beams
        results.append(sorted(finished, key=lambda h: h[1], reverse=True)[: cfg.nbest])
    return results


def test_greedy_equals_reference(backend):
    decoder, context = tiny_decoder_and_context()
    cfg = GenerationConfig(strategy="greedy", max_len=14)
    expected = reference_greedy(decoder, context, cfg)
    assert len({len(t) for t in expected}) > 1, "rows should finish at different steps to exercise row dropping"
    fast = prepared(decoder, backend)
    assert [h[0].tokens for h in generate(fast, context, cfg)] == expected
    threads = torch.get_num_threads()
    try:
        for decode_threads in (1, 2):  # one row: its weights are viewed as one block per thread (at least 2)
            torch.set_num_threads(decode_threads)
            fast = prepared(decoder, backend)
            for i in (0, 2):
                alone = Context(context.states[i : i + 1], context.mask[i : i + 1])
                assert generate(fast, alone, cfg)[0][0].tokens == expected[i]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("min_len", [0, 5])
def test_beam_equals_reference(backend, min_len):
    decoder, context = tiny_decoder_and_context()
    cfg = GenerationConfig(strategy="beam", beam_size=4, nbest=3, max_len=12, min_len=min_len, length_penalty=1.0)
    expected = reference_beam(decoder, context, cfg)
    assert len({len(hyps[0][0]) for hyps in expected}) > 1, "sources should finish at different steps"
    got = generate(prepared(decoder, backend), context, cfg)
    assert [[h.tokens for h in hyps] for hyps in got] == [[t for t, _ in hyps] for hyps in expected]
    for hyps, ref in zip(got, expected):
        assert [h.score for h in hyps] == pytest.approx([s for _, s in ref], abs=1e-4)


def test_sampling_with_a_seed_is_the_same_on_every_backend(backend):
    decoder, context = tiny_decoder_and_context()
    cfg = GenerationConfig(strategy="sample", top_k=10, max_len=10, seed=3)
    expected = [h[0].tokens for h in generate(decoder, context, cfg)]
    assert [h[0].tokens for h in generate(prepared(decoder, backend), context, cfg)] == expected


def test_forced_length_decodes_exactly_max_len(backend):
    """min_len = max_len - 1 (the benchmarks' setting) makes every hypothesis exactly max_len - 1 tokens."""
    decoder = prepared(tiny_decoder_and_context()[0], backend)
    context = tiny_decoder_and_context()[1]
    for strategy in ("greedy", "beam"):
        out = generate(decoder, context, GenerationConfig(strategy=strategy, beam_size=3, max_len=9, min_len=8))
        assert all(len(hyps[0].tokens) == 8 for hyps in out)


def test_step_with_weights_gives_the_same_logits(backend):
    """A step asked for attention weights (mmx-attend) takes the modules' own path: same logits."""
    decoder, context = tiny_decoder_and_context()
    decoder = prepared(decoder, backend)
    tokens = torch.randint(4, VOCAB, (8, 5))
    plain, with_weights = decoder.start(context), decoder.start(context)
    with torch.no_grad():
        for t in range(5):
            a, _ = decoder.step(tokens[:, t : t + 1], plain)
            b, weights = decoder.step(tokens[:, t : t + 1], with_weights, need_weights=True)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(weights) == 2 and weights[0].shape == (8, 4, 1, 7)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("out_dim", [48, 47])  # 47 cannot be split into blocks of rows
@pytest.mark.parametrize("min_weights", [0, 10**9])  # packed, or too small to pack
def test_packed_linear_equals_f_linear_for_any_rows(monkeypatch, approximate, out_dim, min_weights):
    monkeypatch.setattr(cpu, "PACKING_MIN_WEIGHTS", min_weights)
    torch.manual_seed(0)
    linear = nn.Linear(32, out_dim)
    packed = cpu.PackedLinear(linear)
    assert (packed.row_blocks is not None) == (out_dim % max(2, torch.get_num_threads()) == 0)
    assert (packed.packed is not None) == (min_weights == 0 and cpu.ONEDNN)
    for kernel in cpu.SINGLE_ROW_KERNELS:  # whichever one apply_cpu's timing picks on a machine
        packed.single_row = kernel
        for x in (torch.randn(1, 32), torch.randn(5, 32), torch.randn(2, 3, 32), torch.randn(0, 32)):
            with torch.no_grad():
                expected = linear(x)
                torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
                if x.dim() == 2:
                    gelu = nn.functional.gelu(expected, approximate=approximate)
                    torch.testing.assert_close(packed.gelu(x, approximate), gelu, rtol=1e-5, atol=1e-5)
    assert cpu.fastest_single_row_kernel(packed, repeats=2) in cpu.SINGLE_ROW_KERNELS


def test_a_prepared_model_is_frozen_copies_and_keeps_its_state_dict_keys(monkeypatch):
    monkeypatch.setattr(cpu, "PACKING_MIN_WEIGHTS", 0)
    decoder, context = tiny_decoder_and_context()
    model = prepare(Holder(copy.deepcopy(decoder)), "cpu")
    assert model.state_dict().keys() == Holder(decoder).state_dict().keys()
    assert not any(p.requires_grad for p in model.parameters())
    cfg = GenerationConfig(strategy="greedy", max_len=6)
    tokens = [h[0].tokens for h in generate(model.decoder, context, cfg)]
    assert [h[0].tokens for h in generate(copy.deepcopy(model).decoder, context, cfg)] == tokens
    with pytest.raises(RuntimeError, match="frozen"):
        model.train()


def test_an_unknown_backend_is_named():
    from mmxattn.errors import ConfigError

    with pytest.raises(ConfigError, match="backend='fast'.*eager, cpu, compile, int8"):
        prepare(Holder(tiny_decoder_and_context()[0]), "fast")


@needs_compiler
def test_the_compile_backend_decodes_the_reference_tokens():
    """Compiling takes tens of seconds even for this tiny decoder: one compile, both strategies."""
    decoder, context = tiny_decoder_and_context()
    compiled = prepared(decoder, "compile")
    greedy = GenerationConfig(strategy="greedy", max_len=14)
    beam = GenerationConfig(strategy="beam", beam_size=4, nbest=3, max_len=12, min_len=3)
    assert [h[0].tokens for h in generate(compiled, context, greedy)] == reference_greedy(decoder, context, greedy)
    expected = reference_beam(decoder, context, beam)
    got = generate(compiled, context, beam)
    assert [[h.tokens for h in hyps] for hyps in got] == [[t for t, _ in hyps] for hyps in expected]


needs_int8 = pytest.mark.skipif(
    not {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines), reason="no quantized CPU engine"
)


@needs_int8
def test_the_int8_backend_stays_close_to_fp32_and_runs_every_strategy():
    """int8 weights change logits slightly, so a search may pick another token where two were nearly tied:
    held here are the logits (within 5% of their spread) and greedy agreement on most sources (6 of 8)."""
    decoder, context = tiny_decoder_and_context()
    int8 = prepared(decoder, "int8")
    tokens = torch.tensor([[BOS, 5, 9, 11]] * 8)
    with torch.no_grad():
        exact, quantized = decoder(tokens, context)[0], int8(tokens, context)[0]  # [8, 4, V] each
    assert (quantized - exact).abs().max() < 0.05 * (exact.max() - exact.min())
    greedy = GenerationConfig(strategy="greedy", max_len=10)
    same = sum(a[0].tokens == b[0].tokens for a, b in zip(generate(int8, context, greedy), generate(decoder, context, greedy)))
    assert same >= 6, same
    for cfg in (GenerationConfig(strategy="beam", beam_size=3, nbest=2, max_len=8),
                GenerationConfig(strategy="sample", top_k=5, seed=1, max_len=8)):
        assert all(len(h) == cfg.nbest for h in generate(int8, context, cfg))
