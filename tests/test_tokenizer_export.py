"""Tokenizers (joint or separate) travel inside the export, which loads with weights_only=True."""

from __future__ import annotations

import pytest
import torch

from mmxattn.checkpoint import export_model, load_for_inference
from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.generation import GenerationConfig, generate
from mmxattn.model import build_model
from mmxattn.tokenizer import BOS, EOS, PAD, UNK, Tokenizer


def test_trained_tokenizer_round_trips_text_and_fixes_special_ids():
    tok = Tokenizer.train(["the cat sat on the mat", "a dog ran"] * 10, vocab_size=30)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert tok.decode(tok.encode("the cat ran")) == "the cat ran"
    assert tok.decode([BOS] + tok.encode("a dog") + [EOS, PAD]) == "a dog"


def test_separate_vocabularies_and_export_round_trip(tiny_cfg, tmp_path):
    cfg = tiny_cfg("tokenizer.joint=false")
    dm = Seq2SeqDataModule.from_config(cfg)
    dm.prepare()
    assert not dm.tokenizers.joint
    src_vocab, tgt_vocab = len(dm.tokenizers.source), len(dm.tokenizers.target)
    model = build_model(cfg, dm.tokenizers).eval()
    assert model.encoders["src"].embed.num_embeddings == src_vocab
    assert model.decoder.embed.num_embeddings == tgt_vocab

    path = tmp_path / "model.pt"
    export_model(path, model, dm.tokenizers, cfg)
    blob = torch.load(path, weights_only=True)  # plain containers only
    assert blob["config"]["tokenizer"]["joint"] is False

    loaded, tokenizers, loaded_cfg = load_for_inference(path)
    assert tokenizers.source.model_proto == dm.tokenizers.source.model_proto
    batch = dm.splits["valid"].processors["src"].collate([dm.splits["valid"][i]["sources"]["src"] for i in range(3)])
    gen = GenerationConfig(strategy="greedy", max_len=8)
    with torch.no_grad():
        expected = generate(model.decoder, model.encode({"src": batch}), gen)
        got = generate(loaded.decoder, loaded.encode({"src": batch}), gen)
    assert [h[0].tokens for h in got] == [h[0].tokens for h in expected]


def test_tied_source_embeddings_are_one_matrix_through_training_and_export(tiny_cfg, tmp_path):
    """decoder.tie_source_embeddings=true: source embedding, target embedding and output projection are one
    parameter while training, and stay one in the exported model."""
    from mmxattn.train import train

    cfg = tiny_cfg("decoder.tie_source_embeddings=true", "trainer.max_epochs=2")
    dm = Seq2SeqDataModule.from_config(cfg)
    dm.prepare()
    model = build_model(cfg, dm.tokenizers)
    plain = build_model(tiny_cfg(), dm.tokenizers)
    assert model.encoders["src"].embed.weight is model.decoder.embed.weight is model.decoder.output.weight
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in plain.parameters()) - n_params == model.decoder.embed.weight.numel()

    train(cfg)
    loaded, tokenizers, _ = load_for_inference(tmp_path / "run" / "model.pt")
    assert loaded.encoders["src"].embed.weight is loaded.decoder.embed.weight
    assert sum(p.numel() for p in loaded.parameters()) == n_params
    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert torch.equal(raw["encoders.src.embed.weight"], raw["decoder.embed.weight"])  # trained as one


def test_tied_source_embeddings_need_one_vocabulary_and_text_sources(tiny_cfg):
    from mmxattn.errors import ConfigError

    cfg = tiny_cfg("decoder.tie_source_embeddings=true", "tokenizer.joint=false")
    dm = Seq2SeqDataModule.from_config(cfg)
    dm.prepare()
    with pytest.raises(ConfigError, match="tokenizer.joint=true"):
        build_model(cfg, dm.tokenizers)
    cfg = tiny_cfg("decoder.tie_source_embeddings=true", "encoder.d_model=64", "encoder.num_heads=2")
    with pytest.raises(ConfigError, match="same d_model"):
        build_model(cfg, dm.tokenizers.__class__(dm.tokenizers.target))
