"""Several encoders at once: masks across concatenated sources, missing sources, gated cross-attention,
equivalence with the single-encoder model, and the multi-source data path down to a short training."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from mmxattn.checkpoint import load_for_inference
from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.quickstart.multimodal import AMBIGUOUS, make_sample, meaning_accuracy, write_multimodal_corpus
from mmxattn.decoder import TransformerDecoder
from mmxattn.errors import ConfigError, DataError
from mmxattn.fusion import GatedCrossAttention, SourcesContext
from mmxattn.generation import GenerationConfig, generate
from mmxattn.model import PRESENT, EncoderDecoder, build_model
from mmxattn.tokenizer import PAD
from mmxattn.train import train
from mmxattn_encoders.text import TextEncoder

from .conftest import compose_config

VOCAB, D = 48, 16
MODES = ["concat", "gated"]


def text_batch(lengths: list[int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), max(lengths)), PAD)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(4, VOCAB, (n,), generator=g)
    return {"tokens": tokens, "mask": tokens != PAD}


def rows(batch: dict, index: list[int]) -> dict:
    """The given rows of a collated batch, re-trimmed to their own longest length (as a collate would)."""
    mask = batch["mask"][index]
    width = int(mask.sum(1).max())
    return {"tokens": batch["tokens"][index, :width], "mask": mask[:, :width]}


def make_model(mode: str = "concat", sources=("src", "aux"), gate_init: float = 0.5, tags: bool = True) -> EncoderDecoder:
    torch.manual_seed(0)
    widths = {"src": D, "aux": 24}  # aux needs a real bridge (24 -> 16)
    encoders = {s: TextEncoder(vocab_size=VOCAB, d_model=widths[s], num_layers=1, num_heads=2, ffn_dim=32, dropout=0.0)
                for s in sources}
    options = dict(vocab_size=VOCAB, d_model=D, num_layers=2, num_heads=2, ffn_dim=32, dropout=0.0)
    if mode == "gated":  # each layer's cross-attention: one attention per source behind its own gate
        options["cross_attention"] = lambda: GatedCrossAttention(D, 2, list(sources), gate_init=gate_init)
    decoder = TransformerDecoder(**options)
    model = EncoderDecoder(encoders, decoder).eval()
    if tags and model.source_embed is not None:
        nn.init.normal_(model.source_embed)  # trained tags are not zero: make them matter here
    return model


def logits(model, inputs, target) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs, target)


SRC = text_batch([5, 9, 3], seed=1)
AUX = text_batch([7, 2, 6], seed=2)
TARGET = torch.randint(4, VOCAB, (3, 6), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("mode", MODES)
def test_padding_inside_the_concatenation_is_ignored(mode):
    model = make_model(mode)
    context = model.encode({"src": SRC, "aux": AUX})
    assert isinstance(context, SourcesContext)
    assert context.spans == (("src", 0, 9), ("aux", 9, 16))
    assert torch.equal(context.mask, torch.cat([SRC["mask"], AUX["mask"]], 1))
    together = logits(model, {"src": SRC, "aux": AUX}, TARGET)
    for row in range(3):  # alone, a sample has no padding at all
        alone = logits(model, {"src": rows(SRC, [row]), "aux": rows(AUX, [row])}, TARGET[[row]])
        torch.testing.assert_close(together[[row]], alone, atol=1e-5, rtol=1e-4)


def with_missing(batch: dict, present: list[bool]) -> dict:
    """What the Collater builds when some samples lack the source: their rows left out, plus `present`."""
    kept = [i for i, p in enumerate(present) if p]
    return {**(rows(batch, kept) if kept else {}), PRESENT: torch.tensor(present)}


@pytest.mark.parametrize("mode", MODES)
def test_a_sample_lacking_a_source_is_that_sample_without_the_source(mode):
    model = make_model(mode)
    inputs = {"src": SRC, "aux": with_missing(AUX, [True, False, True])}
    together = logits(model, inputs, TARGET)
    lacking = logits(model, {"src": rows(SRC, [1])}, TARGET[[1]])  # `aux` not given at all
    torch.testing.assert_close(together[[1]], lacking, atol=1e-5, rtol=1e-4)
    for row in (0, 2):
        full = logits(model, {"src": rows(SRC, [row]), "aux": rows(AUX, [row])}, TARGET[[row]])
        torch.testing.assert_close(together[[row]], full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_samples_lacking_every_source_give_finite_outputs(mode):
    model = make_model(mode)
    inputs = {"src": with_missing(SRC, [True, False, True]), "aux": with_missing(AUX, [False, False, True])}
    out = logits(model, inputs, TARGET)
    assert torch.isfinite(out).all()  # row 1 has nothing to attend to
    with torch.no_grad():  # the explicit softmax (attention maps) gives NaN over nothing unless guarded
        out_weights, weights = model.decoder(TARGET, model.encode(inputs), need_weights=True)
    assert torch.isfinite(out_weights).all() and all(torch.isfinite(w).all() for w in weights)
    torch.testing.assert_close(out_weights, out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[[0]], logits(model, {"src": rows(SRC, [0])}, TARGET[[0]]), atol=1e-5, rtol=1e-4)
    nothing = {"src": {PRESENT: torch.zeros(3, dtype=torch.bool)}, "aux": {PRESENT: torch.zeros(3, dtype=torch.bool)}}
    assert torch.isfinite(logits(model, nothing, TARGET)).all()
    for strategy in ("greedy", "beam"):
        hyps = generate(model.decoder, model.encode(inputs), GenerationConfig(strategy=strategy, beam_size=3, max_len=5))
        assert len(hyps) == 3 and all(h[0].score == h[0].score for h in hyps)  # no NaN scores


def copy_for_one_source(multi: EncoderDecoder, single: EncoderDecoder) -> None:
    """single (reads `src`) gets multi's weights for everything it has."""
    state = {k: v for k, v in multi.state_dict().items() if k in single.state_dict()}
    for key, value in single.state_dict().items():
        if key.endswith("cross_attn.gates"):  # per-source gates: keep src's
            state[key] = multi.state_dict()[key][:1]
    missing, unexpected = single.load_state_dict(state, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys, (missing, unexpected)


@pytest.mark.parametrize("mode", MODES)
def test_given_one_source_a_fresh_two_source_model_equals_the_single_encoder_model(mode):
    multi = make_model(mode, tags=False)  # as built: the learned source tags start at zero
    single = make_model(mode, sources=("src",))
    copy_for_one_source(multi, single)
    torch.testing.assert_close(logits(multi, {"src": SRC}, TARGET), logits(single, {"src": SRC}, TARGET))
    cfg = GenerationConfig(strategy="beam", beam_size=3, max_len=6)
    assert ([h[0].tokens for h in generate(multi.decoder, multi.encode({"src": SRC}), cfg)]
            == [h[0].tokens for h in generate(single.decoder, single.encode({"src": SRC}), cfg)])


def test_gates_start_closed_and_open_per_source():
    closed = make_model("gated", gate_init=0.0)
    other = {"src": text_batch([4, 4, 4], seed=9), "aux": AUX}
    # tanh(0) = 0: the fresh decoder is a language model that does not read its sources yet
    torch.testing.assert_close(logits(closed, {"src": SRC, "aux": AUX}, TARGET), logits(closed, other, TARGET))
    for layer in closed.decoder.layers:
        layer.cross_attn.gates.data = torch.tensor([1.0, 0.0])  # open src only
    assert not torch.allclose(logits(closed, {"src": SRC, "aux": AUX}, TARGET), logits(closed, other, TARGET))
    torch.testing.assert_close(logits(closed, {"src": SRC, "aux": AUX}, TARGET),
                               logits(closed, {"src": SRC, "aux": text_batch([3, 3, 3], seed=5)}, TARGET))


@pytest.mark.parametrize("mode", MODES)
def test_incremental_decoding_with_beams_matches_the_full_forward(mode):
    model = make_model(mode)
    context = model.encode({"src": SRC, "aux": with_missing(AUX, [True, False, True])})
    with torch.no_grad():
        full, weights = model.decoder(TARGET, context, need_weights=True)
        beams = 2  # rows b*2, b*2+1 belong to source b and share its cross-attention keys/values
        state = model.decoder.start(context)
        steps = [model.decoder.step(TARGET.repeat_interleave(beams, 0)[:, t : t + 1], state)[0] for t in range(TARGET.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full.repeat_interleave(beams, 0), atol=1e-5, rtol=1e-4)
    sums = weights[0].sum(-1)  # [B, H, T]: each source a sample has contributes weights summing to 1
    expected = torch.tensor([1.0, 1.0, 1.0]) if mode == "concat" else torch.tensor([2.0, 1.0, 2.0])
    torch.testing.assert_close(sums, expected[:, None, None].expand_as(sums))


@pytest.fixture(scope="module")
def mm_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("multimodal")
    write_multimodal_corpus(root, train=120, valid=8, test=8, seed=5)
    return root


TINY_MM = [
    "recipe=multimodal/quickstart", "data.synthetic=null", "encoders.src.d_model=32", "encoders.src.num_layers=1",
    "encoders.src.num_heads=2", "encoders.src.ffn_dim=64", "decoder.d_model=32", "decoder.num_layers=1",
    "decoder.num_heads=2", "decoder.ffn_dim=64", "tokenizer.vocab_size=120", "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1", "progress_refresh=0",
]


def test_the_generated_task_needs_both_sources():
    rng = random.Random(0)
    meaning_of_glyph, translations = {}, {}
    for _ in range(3000):
        english, invented, glyph = make_sample(rng)
        word = next(w for w in AMBIGUOUS if w in english.lower().rstrip(".").split() or AMBIGUOUS[w][0] in english.lower())
        stems = [stem for _, stem, _, g in AMBIGUOUS[word][1] if g == glyph]
        assert len(stems) == 1 and stems[0] in invented.lower()  # the picture names the meaning
        meaning_of_glyph.setdefault(glyph, set()).add(stems[0])
        translations.setdefault(word, set()).add(glyph)
    assert all(len(stems) == 1 for stems in meaning_of_glyph.values()) and len(meaning_of_glyph) == 12
    assert all(len(glyphs) == 2 for glyphs in translations.values())  # the word alone leaves two meanings


def test_meaning_accuracy_checks_the_ambiguous_noun_only():
    targets = ["Lo nokto veko du mizui vidas.", "Du bastonai lo flumo vidan.", "Una grua la pela trovas."]
    hyps = ["Lo nokto veko vidas.", "Du noktoi lo flumo vidan.", "Una grua lo levilo trovas."]
    assert meaning_accuracy(targets, hyps) == pytest.approx(100 / 3)  # right, wrong meaning, both meanings


def test_multisource_tsv_marks_missing_sources_and_rejects_samples_without_any(mm_corpus, tmp_path):
    lines = (mm_corpus / "train.tsv").read_text().splitlines()
    header, rows_ = lines[0], [line.split("\t") for line in lines[1:]]
    rows_[0][2] = ""  # no picture
    rows_[1][1] = ""  # no sentence
    (tmp_path / "train.tsv").write_text("\n".join([header] + ["\t".join(r) for r in rows_]) + "\n")
    for name in ("valid.tsv", "test.tsv"):
        (tmp_path / name).write_text((mm_corpus / name).read_text())
    (tmp_path / "images").symlink_to(mm_corpus / "images")
    cfg = compose_config([*TINY_MM, f"data.root={tmp_path}", "data.max_sentences=4"], output_dir=tmp_path / "run")
    datamodule = Seq2SeqDataModule.from_config(cfg)
    datamodule.prepare(("train", "valid"))
    samples = datamodule.splits["train"].samples
    assert "image" not in samples[0].sources and "src" not in samples[1].sources
    assert Path(samples[2].sources["image"]).is_file()  # relative paths resolved against data.root
    loader = datamodule.loader("train", shuffle=False)
    batches = [b for b in loader if 0 in b["index"].tolist() or 1 in b["index"].tolist()]
    model = build_model(cfg, datamodule.tokenizers).eval()
    for batch in batches:
        index = batch["index"].tolist()
        for source, missing in (("image", 0), ("src", 1)):
            if missing in index:
                present = batch["inputs"][source][PRESENT]
                assert present.tolist() == [i != missing for i in index]
                assert len(batch["inputs"][source]["mask"]) == sum(present.tolist())
        assert torch.isfinite(logits(model, batch["inputs"], batch["target_in"])).all()

    rows_[2][1] = rows_[2][2] = ""  # neither
    (tmp_path / "train.tsv").write_text("\n".join([header] + ["\t".join(r) for r in rows_]) + "\n")
    with pytest.raises(DataError, match=r"train.tsv:4: has none of the sources this model reads \(src, image\)"):
        Seq2SeqDataModule.from_config(cfg).prepare(("train",))
    cfg.data.skip_invalid = True
    datamodule = Seq2SeqDataModule.from_config(cfg)
    datamodule.prepare(("train",))
    assert datamodule.skipped.counts == {"no source": 1}


def test_fusion_and_sources_come_from_the_config(mm_corpus, tmp_path):
    cfg = compose_config([*TINY_MM, f"data.root={mm_corpus}"], output_dir=tmp_path)
    datamodule = Seq2SeqDataModule.from_config(cfg)
    datamodule.prepare(("train",))
    model = build_model(cfg, datamodule.tokenizers)
    assert list(model.encoders) == ["src", "image"] and type(model.decoder) is TransformerDecoder
    cfg.fusion.mode = "gated"
    assert isinstance(build_model(cfg, datamodule.tokenizers).decoder.layers[0].cross_attn, GatedCrossAttention)
    cfg.fusion.mode = "sum"
    with pytest.raises(ConfigError, match="fusion.mode='sum'"):
        build_model(cfg, datamodule.tokenizers)
    text_only = compose_config([*TINY_MM, f"data.root={mm_corpus}", "encoders.image=null"], output_dir=tmp_path)
    assert list(build_model(text_only, datamodule.tokenizers).encoders) == ["src"]


def test_multimodal_recipe_trains_with_gated_fusion_and_reloads(mm_corpus, tmp_path):
    cfg = compose_config([*TINY_MM, f"data.root={mm_corpus}", "fusion.mode=gated", "trainer.max_steps=3",
                          "generation.max_len=8", "eval.generation.max_len=8", "generation.beam_size=2"],
                         output_dir=tmp_path / "run")
    results = train(cfg)
    assert "test_bleu" in results
    model, tokenizers, loaded_cfg = load_for_inference(tmp_path / "run" / "model.pt")
    assert isinstance(model.decoder.layers[0].cross_attn, GatedCrossAttention) and loaded_cfg.fusion.mode == "gated"
    gates = torch.stack([layer.cross_attn.gates for layer in model.decoder.layers])
    assert gates.abs().sum() > 0  # the gates learned (they start at 0)
