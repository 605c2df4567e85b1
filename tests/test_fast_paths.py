"""The optimised decoding path must give exactly what a straightforward one gives.

The reference decoders below take no shortcuts: every step re-runs the full teacher-forced forward pass
over the whole prefix (no key/value cache), every beam gets its own copy of the context (no sharing),
each source is decoded on its own (no batching, no dropping of finished rows), in plain Python.
"""

import copy

import lightning as L
import pytest
import torch

from mmxattn import fast_linear
from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.attention import KVCache
from mmxattn.context import Context
from mmxattn.decoder import TransformerDecoder
from mmxattn.generation import GenerationConfig, generate
from mmxattn.model import build_model
from mmxattn.task import Seq2SeqTask
from mmxattn.tokenizer import BOS, EOS, PAD

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

VOCAB = 48


@pytest.fixture(params=["packed", "plain"])
def decoder_and_context(request, monkeypatch):
    """A tiny decoder; "packed" makes its weights take the layouts that the big models' weights take."""
    if request.param == "packed":
        monkeypatch.setattr(fast_linear, "PACKING_MIN_WEIGHTS", 0)
    return tiny_decoder_and_context()


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


def test_fast_greedy_equals_reference(decoder_and_context):
    decoder, context = decoder_and_context
    cfg = GenerationConfig(strategy="greedy", max_len=14)
    expected = reference_greedy(decoder, context, cfg)
    assert len({len(t) for t in expected}) > 1, "rows should finish at different steps to exercise row dropping"
    assert [h[0].tokens for h in generate(decoder, context, cfg)] == expected
    threads = torch.get_num_threads()
    try:
        for decode_threads in (1, 2):  # one row: its weights are split into one block per thread (at least 2)
            torch.set_num_threads(decode_threads)
            for i in (0, 2):
                alone = Context(context.states[i : i + 1], context.mask[i : i + 1])
                assert generate(decoder, alone, cfg)[0][0].tokens == expected[i]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("min_len", [0, 5])
def test_fast_beam_equals_reference(decoder_and_context, min_len):
    decoder, context = decoder_and_context
    cfg = GenerationConfig(strategy="beam", beam_size=4, nbest=3, max_len=12, min_len=min_len, length_penalty=1.0)
    expected = reference_beam(decoder, context, cfg)
    assert len({len(hyps[0][0]) for hyps in expected}) > 1, "sources should finish at different steps"
    got = generate(decoder, context, cfg)
    assert [[h.tokens for h in hyps] for hyps in got] == [[t for t, _ in hyps] for hyps in expected]
    for hyps, ref in zip(got, expected):
        assert [h.score for h in hyps] == pytest.approx([s for _, s in ref], abs=1e-4)


def test_forced_length_decodes_exactly_max_len(decoder_and_context):
    """min_len = max_len - 1 (the benchmarks' setting) makes every hypothesis exactly max_len - 1 tokens."""
    decoder, context = decoder_and_context
    for strategy in ("greedy", "beam"):
        out = generate(decoder, context, GenerationConfig(strategy=strategy, beam_size=3, max_len=9, min_len=8))
        assert all(len(hyps[0].tokens) == 8 for hyps in out)


def test_step_with_weights_gives_the_same_logits(decoder_and_context):
    decoder, context = decoder_and_context
    tokens = torch.randint(4, VOCAB, (8, 5))
    plain, with_weights = decoder.start(context), decoder.start(context)
    with torch.no_grad():
        for t in range(5):
            a, _ = decoder.step(tokens[:, t : t + 1], plain)
            b, weights = decoder.step(tokens[:, t : t + 1], with_weights, need_weights=True)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(weights) == 2 and weights[0].shape == (8, 4, 1, 7)


@pytest.mark.parametrize("layout", ["packed", "row_blocks", "plain"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("out_dim", [48, 47])  # 47 cannot be split into blocks of rows
def test_inference_linear_equals_f_linear_in_every_layout(monkeypatch, layout, approximate, out_dim):
    monkeypatch.setattr(fast_linear, "PACKING_MIN_WEIGHTS", 0)
    torch.manual_seed(0)
    module = fast_linear.Linear(32, out_dim).eval()
    linear = fast_linear.InferenceLinear(module, layout)
    assert (linear.row_blocks is not None) == (layout != "plain" and out_dim % 2 == 0)
    assert (linear.packed is not None) == (layout == "packed" and fast_linear.ONEDNN)
    for x in (torch.randn(1, 32), torch.randn(5, 32)):
        expected = torch.nn.functional.linear(x, module.weight.detach(), module.bias.detach())
        torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)
        gelu = torch.nn.functional.gelu(expected, approximate=approximate)
        torch.testing.assert_close(linear.gelu(x, approximate), gelu, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not fast_linear.ONEDNN, reason="this torch build cannot pack weights for oneDNN")
def test_linear_packs_its_weight_only_for_evaluation_and_follows_weight_changes(monkeypatch):
    monkeypatch.setattr(fast_linear, "PACKING_MIN_WEIGHTS", 0)
    torch.manual_seed(0)
    linear, x = fast_linear.Linear(32, 48), torch.randn(2, 5, 32)  # x [N, T, in]

    def check(expect_packed: bool) -> None:
        expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
        torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)
        assert (linear._packed is not None) == expect_packed

    check(False)  # training, autograd on
    linear.eval()
    check(False)  # autograd on: gradients must flow through the module's own weight
    with torch.no_grad():
        check(True)
        packed = linear.packed_weight()
        torch.optim.SGD(linear.parameters(), lr=1.0).step()  # no gradients: nothing changes, but a step counts
        assert linear.packed_weight() is not packed
        linear.weight.mul_(-2.0)  # an in-place write: the copy is remade from the new weight
        check(True)
        copied = copy.deepcopy(linear)  # the opaque packed tensor is not copied; the copy packs its own
        assert copied._packed is None
        torch.testing.assert_close(copied(x), linear(x), rtol=0, atol=0)
    linear.train()
    assert linear._packed is None, "training holds no packed copy"


@pytest.mark.skipif(not fast_linear.ONEDNN, reason="this torch build cannot pack weights for oneDNN")
def test_writes_through_data_are_picked_up_after_dropping_the_packed_copies(monkeypatch):
    """`.data` writes bump no version counter; drop_decode_plan / drop_packed_weights are the way to say so."""
    monkeypatch.setattr(fast_linear, "PACKING_MIN_WEIGHTS", 0)
    decoder, context = tiny_decoder_and_context()
    cfg = GenerationConfig(strategy="greedy", max_len=6)
    generate(decoder, context, cfg)  # packs every linear of the decoder
    with torch.no_grad():
        for layer in decoder.layers:
            layer.ffn[0].weight.data.copy_(torch.randn_like(layer.ffn[0].weight))
    decoder.drop_decode_plan()
    fresh = copy.deepcopy(decoder)  # packs from scratch
    assert [h[0].tokens for h in generate(decoder, context, cfg)] == [h[0].tokens for h in generate(fresh, context, cfg)]

    linear, x = fast_linear.Linear(32, 48).eval(), torch.randn(3, 32)
    with torch.no_grad():
        linear(x)
        linear.weight.data.mul_(-1.0)
        fast_linear.drop_packed_weights(torch.nn.Sequential(linear))
        expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
        torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)


def test_a_decoder_that_has_decoded_can_be_copied_and_training_drops_its_plan(decoder_and_context):
    """Lightning's weight averaging and users deep-copy models; the cached decode plan must not stop them."""
    decoder, context = decoder_and_context
    cfg = GenerationConfig(strategy="greedy", max_len=6)
    tokens = [h[0].tokens for h in generate(decoder, context, cfg)]
    assert [h[0].tokens for h in generate(copy.deepcopy(decoder), context, cfg)] == tokens
    assert decoder._cached_plan is not None
    decoder.train()
    assert decoder._cached_plan is None, "training holds no decode-time weight copies"


def test_kv_cache_reorder_and_drop_rows_keep_the_right_history():
    """Beam reordering and dropping rows go through the spare buffer; growth keeps what was written."""
    cache = KVCache(capacity=2)
    history = torch.randn(5, 3, 7, 4)  # [N, H, t, Dh]
    rows = torch.arange(5)
    for t in range(7):
        index = torch.randperm(len(rows))[: len(rows) - (t == 3)]  # a permutation; one row dropped at t=3
        cache.index_select(index)
        rows = rows[index]
        k, v = cache.append(history[rows, :, t : t + 1], -history[rows, :, t : t + 1])
        torch.testing.assert_close(k, history[rows, :, : t + 1], rtol=0, atol=0)
        torch.testing.assert_close(v, -history[rows, :, : t + 1], rtol=0, atol=0)


class _KeepValidationOutputs(L.Callback):
    """Copies the decoded validation outputs before Seq2SeqTask scores (and clears) them."""

    def __init__(self):
        self.outputs = []

    def on_validation_epoch_end(self, trainer, task):
        self.outputs.append(sorted(task._val_outputs))


def test_validation_during_training_decodes_with_the_current_weights(tiny_cfg, monkeypatch):
    # Fused AdamW updates weights in place without bumping their version counters, and Lightning restores
    # training mode without calling train(): the decode-time weight copies must still be rebuilt.
    monkeypatch.setattr(fast_linear, "PACKING_MIN_WEIGHTS", 0)  # copies even of this tiny model's weights
    cfg = tiny_cfg("trainer.max_epochs=3", "optim.lr=3e-3", "optim.warmup_steps=5", "data.test=null")
    datamodule = Seq2SeqDataModule(cfg)
    datamodule.prepare(("train", "valid"))
    task = Seq2SeqTask(build_model(cfg, datamodule.tokenizers), datamodule.tokenizers, cfg)
    during = _KeepValidationOutputs()
    trainer_args = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    L.Trainer(max_epochs=3, callbacks=[during], **trainer_args).fit(task, datamodule=datamodule)

    fresh = build_model(cfg, datamodule.tokenizers)  # the same final weights, no decode-time copies yet
    fresh.load_state_dict(task.model.state_dict())
    after = _KeepValidationOutputs()
    L.Trainer(callbacks=[after], **trainer_args).validate(Seq2SeqTask(fresh, datamodule.tokenizers, cfg), datamodule)
    assert len(during.outputs) == 3 and during.outputs[0] != during.outputs[-1]  # the outputs did change
    assert during.outputs[-1] == after.outputs[0]
