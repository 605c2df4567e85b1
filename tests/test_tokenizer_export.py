"""Tokenizers (joint or separate) travel inside the export, which loads with weights_only=True."""

from __future__ import annotations

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
