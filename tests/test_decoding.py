import pytest
import torch

from mmxattn.context import Context
from mmxattn.decoder import TransformerDecoder
from mmxattn.generation import GenerationConfig, generate
from mmxattn.errors import ConfigError


@pytest.fixture
def decoder_and_context():
    torch.manual_seed(0)
    decoder = TransformerDecoder(vocab_size=40, d_model=32, num_layers=2, num_heads=4, ffn_dim=64, dropout=0.0).eval()
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3, [True] * 2 + [False] * 7, [True] * 9])
    return decoder, Context(torch.randn(4, 9, 32), mask)


def test_incremental_decoding_equals_full_forward(decoder_and_context):
    decoder, context = decoder_and_context
    tokens = torch.randint(4, 40, (4, 8))
    full, _ = decoder(tokens, context)
    state = decoder.start(context, capacity=3)
    steps = [decoder.step(tokens[:, t : t + 1], state)[0] for t in range(tokens.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_beam_size_one_equals_greedy(decoder_and_context):
    decoder, context = decoder_and_context
    greedy = generate(decoder, context, GenerationConfig(strategy="greedy", max_len=12))
    beam = generate(decoder, context, GenerationConfig(strategy="beam", beam_size=1, max_len=12, length_penalty=0.0))
    assert [h[0].tokens for h in greedy] == [h[0].tokens for h in beam]
    for g, b in zip(greedy, beam):
        assert g[0].score == pytest.approx(b[0].score, abs=1e-4)


def test_beam_search_nbest_sorted_and_scored(decoder_and_context):
    decoder, context = decoder_and_context
    cfg = GenerationConfig(strategy="beam", beam_size=4, nbest=3, max_len=10, length_penalty=1.0)
    results = generate(decoder, context, cfg)
    assert len(results) == 4
    for hyps in results:
        assert len(hyps) == 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 3  # distinct hypotheses
    # the reported score is the model's own log-probability of the hypothesis (EOS included) / length
    best = results[0][0]
    with torch.no_grad():
        seq = torch.tensor([[2] + best.tokens])
        logp = decoder(seq, Context(context.states[:1], context.mask[:1]))[0].log_softmax(-1)[0]
    targets = best.tokens + [3]
    total = sum(float(logp[i, t]) for i, t in enumerate(targets))
    assert best.score == pytest.approx(total / len(targets), abs=1e-4)


def test_beam_search_finds_at_least_greedy_score(decoder_and_context):
    decoder, context = decoder_and_context
    greedy = generate(decoder, context, GenerationConfig(strategy="greedy", max_len=10))
    beam = generate(decoder, context, GenerationConfig(strategy="beam", beam_size=6, max_len=10, length_penalty=0.0))
    for g, b in zip(greedy, beam):
        assert b[0].score >= g[0].score - 1e-5


def test_batched_greedy_equals_one_by_one(decoder_and_context):
    """Rows that finish early leave the batch; the others must not notice."""
    decoder, context = decoder_and_context
    cfg = GenerationConfig(strategy="greedy", max_len=15)
    batched = generate(decoder, context, cfg)
    for i in range(4):
        single = generate(decoder, Context(context.states[i : i + 1], context.mask[i : i + 1]), cfg)
        assert single[0][0].tokens == batched[i][0].tokens


def test_batched_beam_equals_one_by_one(decoder_and_context):
    decoder, context = decoder_and_context
    cfg = GenerationConfig(strategy="beam", beam_size=3, nbest=2, max_len=12)
    batched = generate(decoder, context, cfg)
    for i in range(4):
        single = generate(decoder, Context(context.states[i : i + 1], context.mask[i : i + 1]), cfg)
        assert [h.tokens for h in single[0]] == [h.tokens for h in batched[i]]


def test_sampling_respects_top_k_and_seed(decoder_and_context):
    decoder, context = decoder_and_context
    cfg = GenerationConfig(strategy="sample", top_k=1, max_len=10, seed=3)
    greedy = generate(decoder, context, GenerationConfig(strategy="greedy", max_len=10))
    assert [h[0].tokens for h in generate(decoder, context, cfg)] == [h[0].tokens for h in greedy]
    hot = GenerationConfig(strategy="sample", temperature=5.0, top_p=0.95, max_len=10, seed=11)
    assert [h[0].tokens for h in generate(decoder, context, hot)] == [h[0].tokens for h in generate(decoder, context, hot)]


def test_min_and_max_length(decoder_and_context):
    decoder, context = decoder_and_context
    for strategy in ("greedy", "beam"):
        out = generate(decoder, context, GenerationConfig(strategy=strategy, min_len=5, max_len=7, beam_size=2))
        for hyps in out:
            assert 5 <= len(hyps[0].tokens) <= 6  # max_len counts the EOS


@pytest.mark.parametrize("bad", [dict(strategy="nucleus"), dict(beam_size=2, nbest=3), dict(max_len=0), dict(top_p=0.0)])
def test_invalid_generation_config_is_named(bad):
    with pytest.raises(ConfigError, match="generation"):
        GenerationConfig(**bad)
