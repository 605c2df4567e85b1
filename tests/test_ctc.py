"""The auxiliary CTC loss: blank-only and repeated-label targets, contexts too short for their targets,
padding between concatenated sources, where its gradient goes, and how the Task adds it to the loss."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from mmxattn import ctc
from mmxattn.data.datamodule import IGNORE, Seq2SeqDataModule
from mmxattn.decoder import TransformerDecoder
from mmxattn.errors import ConfigError
from mmxattn.model import EncoderDecoder, build_model
from mmxattn.train import build_task
from mmxattn.tokenizer import EOS
from mmxattn_encoders.audio import AudioEncoder, AudioProcessor

pytestmark = pytest.mark.usefixtures("one_thread")


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(map(len, rows)))
    return (torch.tensor([r + [ctc.BLANK] * (width - len(r)) for r in rows]), torch.tensor([len(r) for r in rows]))


def test_blank_only_and_repeated_targets_give_finite_losses():
    torch.manual_seed(0)
    logits, mask = torch.randn(3, 6, 8, requires_grad=True), torch.ones(3, 6, dtype=torch.bool)
    targets, lengths = padded([[], [5, 5], [4, 5, 6]])  # nothing said; "a a"; "a b c"
    loss, too_short = ctc.ctc_loss(logits, mask, targets, lengths)
    assert torch.isfinite(loss) and loss > 0 and not too_short.any()
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # an empty target is the all-blank path: its loss is -sum(log p(blank)) exactly
    alone, _ = ctc.ctc_loss(logits[:1], mask[:1], targets[:1, :0], lengths[:1])
    torch.testing.assert_close(alone, -logits[0].log_softmax(-1)[:, ctc.BLANK].sum())


def test_repeats_need_a_blank_between_and_too_short_rows_add_nothing():
    targets, lengths = padded([[5, 5], [5, 6], [5, 5, 5]])
    assert ctc.min_positions(targets, lengths).tolist() == [3, 2, 5]  # "a a" needs "a _ a"
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, requires_grad=True)
    mask = torch.tensor([[True, True, False, False], [True, True, False, False], [True] * 4])
    loss, too_short = ctc.ctc_loss(logits, mask, targets, lengths)
    assert too_short.tolist() == [True, False, True]  # 2 positions for "a a"; 4 for "a a a"
    expected, _ = ctc.ctc_loss(logits[1:2], mask[1:2], targets[1:2], lengths[1:2])
    torch.testing.assert_close(loss, expected)  # the impossible rows count zero, not infinity
    loss.backward()
    assert torch.isfinite(logits.grad).all() and not logits.grad[[0, 2]].any()


def test_padding_between_concatenated_sources_is_skipped():
    """Two sources concatenated along S leave padding between them; CTC reads the real positions in order."""
    torch.manual_seed(0)
    compact = torch.randn(1, 5, 8)
    holes = torch.zeros(1, 8, 8)
    holes[0, [0, 1, 4, 5, 6]] = compact[0]
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, [0, 1, 4, 5, 6]] = True
    targets, lengths = padded([[4, 6]])
    torch.testing.assert_close(ctc.ctc_loss(holes, mask, targets, lengths)[0],
                               ctc.ctc_loss(compact, torch.ones(1, 5, dtype=torch.bool), targets, lengths)[0])


def test_decoder_targets_drop_eos_and_padding():
    target_out = torch.tensor([[7, 8, 9, EOS], [5, EOS, IGNORE, IGNORE], [EOS, IGNORE, IGNORE, IGNORE]])
    targets, lengths = ctc.decoder_targets(target_out, IGNORE)
    assert lengths.tolist() == [3, 1, 0]
    assert targets.tolist() == [[7, 8, 9], [5, ctc.BLANK, ctc.BLANK], [ctc.BLANK] * 3]


def tiny_speech_model(vocab: int = 12) -> EncoderDecoder:
    encoder = AudioEncoder(num_mel_bins=80, conv_channels=16, d_model=16, num_layers=1, num_heads=2, ffn_dim=32,
                           dropout=0.0)
    decoder = TransformerDecoder(vocab_size=vocab, d_model=24, num_layers=1, num_heads=2, ffn_dim=32, dropout=0.0)
    return EncoderDecoder({"src": encoder}, decoder, ctc_vocab_size=vocab)


def test_ctc_gradient_reaches_the_encoder_and_head_but_not_the_decoder():
    torch.manual_seed(0)
    model = tiny_speech_model()
    batch = AudioProcessor().collate([torch.randn(60, 80), torch.randn(41, 80)])
    target_in = torch.tensor([[2, 4, 5, 5], [2, 6, 0, 0]])
    _, ctc_logits, mask = model({"src": batch}, target_in, with_ctc=True)
    assert ctc_logits.shape == (2, 15, 12) and mask.sum(1).tolist() == [15, 11]  # 4x subsampled frames
    targets, lengths = padded([[4, 5, 5], [6]])
    ctc.ctc_loss(ctc_logits, mask, targets, lengths)[0].backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is None or not g.any() for name, g in grads.items() if name.startswith("decoder."))
    for part in ("encoders.src.subsample.", "encoders.src.encoder.", "bridges.src.", "ctc_head."):
        assert any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if name.startswith(part)), part


def test_no_head_without_weight_and_the_task_adds_the_weighted_sum(tiny_cfg):
    cfg = tiny_cfg()
    data = Seq2SeqDataModule.from_config(cfg)
    data.prepare(("train",))
    assert build_model(cfg, data.tokenizers).ctc_head is None  # loss.ctc_weight=0: nothing is built
    batch = next(iter(data.loader("train", shuffle=False)))

    cfg = tiny_cfg("loss.ctc_weight=0.5")  # a text encoder: CTC is modality-agnostic
    torch.manual_seed(0)
    model = build_model(cfg, data.tokenizers)
    assert model.ctc_head.proj.out_features == len(data.tokenizers.target)
    task = build_task(cfg, model).eval()
    total, ntokens = task._loss(batch, reduction="sum")
    logits, ctc_logits, mask = model(batch["inputs"], batch["target_in"], with_ctc=True)
    ce = F.cross_entropy(logits.flatten(0, 1), batch["target_out"].flatten(), ignore_index=IGNORE,
                         label_smoothing=cfg.loss.label_smoothing, reduction="sum")
    ctc_sum, _ = ctc.ctc_loss(ctc_logits, mask, *ctc.decoder_targets(batch["target_out"], IGNORE))
    torch.testing.assert_close(total, ce + 0.5 * ctc_sum)
    torch.testing.assert_close(task._loss(batch)[0], total / ntokens)  # the mean shares the token count


def test_bad_ctc_settings_are_named(tiny_cfg):
    with pytest.raises(ConfigError, match="loss.ctc_target='both'"):
        ctc.settings(tiny_cfg("loss.ctc_weight=0.3", "loss.ctc_target=both"))
    with pytest.raises(ConfigError, match="loss.ctc_weight=-1.0"):
        ctc.settings(tiny_cfg("loss.ctc_weight=-1"))


def test_joint_ctc_rescoring_prefers_what_the_audio_says():
    """Attention alone ranks [6] first; CTC, reading 4 positions that say 5, ranks [5] first and rules out a
    hypothesis longer than the context can hold."""
    from mmxattn.context import Context
    from mmxattn.generation import GenerationConfig, Hypothesis, rescore_with_ctc

    states = torch.full((1, 4, 8), -5.0)
    states[0, :, ctc.BLANK] = 5.0
    states[0, 1, 5] = 8.0  # position 1 says 5
    context = Context(states, torch.ones(1, 4, dtype=torch.bool))

    def hyps():
        return [[Hypothesis([6], -0.1), Hypothesis([5], -0.5), Hypothesis([5, 6, 7, 4, 5], -0.2)]]

    def ranked(weight):
        cfg = GenerationConfig(beam_size=3, nbest=3, ctc_weight=weight)
        return [h.tokens for h in rescore_with_ctc(hyps(), context, torch.nn.Identity(), cfg)[0]]

    assert ranked(0.0) == [[6], [5, 6, 7, 4, 5], [5]]
    assert ranked(0.5) == [[5], [6], [5, 6, 7, 4, 5]]
    with pytest.raises(ConfigError, match="ctc_weight"):
        GenerationConfig(ctc_weight=1.5)


def test_rescoring_needs_a_head_over_the_targets(caplog):
    from mmxattn.generation import GenerationConfig

    model = tiny_speech_model().eval()
    batch = AudioProcessor().collate([torch.randn(60, 80)])
    config = GenerationConfig(beam_size=2, max_len=4, ctc_weight=0.3)
    assert len(model.generate({"src": batch}, config)) == 1
    model.ctc_target = "source"  # a head that spells the transcripts cannot score target hypotheses:
    with caplog.at_level(logging.WARNING):  # decoded without it, and said once
        assert len(model.generate({"src": batch}, config)) == len(model.generate({"src": batch}, config)) == 1
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "generation.ctc_weight=0.3 is ignored" in caplog.records[0].message


def test_ctc_strategy_reads_the_best_path_merging_repeats_and_skipping_blanks_and_padding():
    """generation.strategy=ctc: per position the most likely label; "5 5 _ 5 6 6" says 5 5 6; padding says nothing."""
    from mmxattn.context import Context
    from mmxattn.generation import GenerationConfig, generate

    def says(*labels):  # [S, 8] logits whose best label at each position is `labels`
        row = torch.full((len(labels), 8), -4.0)
        row[torch.arange(len(labels)), torch.tensor(labels)] = 4.0
        return row

    states = torch.stack([says(5, 5, ctc.BLANK, 5, 6, 6), says(7, ctc.BLANK, 4, 4, 6, 5)])  # [2, 6, 8]
    mask = torch.tensor([[True] * 6, [True, True, True, True, False, False]])  # row 1: its last 2 are padding
    hyps = generate(None, Context(states, mask), GenerationConfig(strategy="ctc"), ctc_head=torch.nn.Identity())
    assert [h[0].tokens for h in hyps] == [[5, 5, 6], [7, 4]]
    best = states.log_softmax(-1).max(-1).values
    assert hyps[1][0].score == pytest.approx(best[1, :4].sum().item(), rel=1e-5)


def test_ctc_strategy_needs_a_head_over_the_targets_and_no_prompt():
    from mmxattn.generation import GenerationConfig

    model = tiny_speech_model().eval()
    batch = AudioProcessor().collate([torch.randn(60, 80), torch.randn(40, 80)])
    config = GenerationConfig(strategy="ctc")
    hyps = model.generate({"src": batch}, config)
    assert len(hyps) == 2 and all(len(h) == 1 for h in hyps)
    with pytest.raises(ConfigError, match="prompt"):
        model.generate({"src": batch}, config, prompt=[7])
    model.ctc_target = "source"  # a head that spells the transcripts does not speak the target vocabulary
    with pytest.raises(ConfigError, match="loss.ctc_target=target"):
        model.generate({"src": batch}, config)
    with pytest.raises(ConfigError, match="strategy"):
        GenerationConfig(strategy="ctc-prefix")
