"""Tests of the byte_cnn plugin; run them with `python -m pytest -q` after `pip install -e .`."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from mmxattn import hydra_search, registry
from mmxattn.errors import DataError

CFG = {"name": "byte_cnn", "d_model": 16, "num_layers": 2, "kernel_size": 5, "downsample": 2, "dropout": 0.0,
       "max_bytes": 64}


def test_installed_plugin_is_found_by_its_entry_point():
    assert registry.available()["byte_cnn"].package == "mmxattn-plugin-template"
    assert registry.get_plugin("byte_cnn").input_kind == "text"


def test_config_is_selectable_with_encoder_equals_name():
    hydra_search.register()  # what mmx-train does before composing
    with initialize_config_module("mmxattn.conf", version_base="1.3"):
        cfg = compose("train", overrides=["encoder=byte_cnn", "encoder.num_layers=1"])
    assert cfg.encoder.name == "byte_cnn" and cfg.encoder.num_layers == 1


def test_processor_collate_and_encoder_honour_the_contract():
    plugin = registry.get_plugin("byte_cnn")
    processor = plugin.build_processor(CFG, train=True)
    encoder = registry.build_encoder("byte_cnn", CFG).eval()
    texts = ["héllo", "a much longer sentence"]
    batch = processor.collate([processor(t) for t in texts])
    assert batch["bytes"].shape == batch["mask"].shape == (2, 22)
    context = registry.check_context("byte_cnn", encoder(batch), batch_size=2)
    assert context.states.shape == (2, 11, encoder.output_dim)
    assert context.mask.sum(1).tolist() == [processor.length(t) for t in texts] == [3, 11]  # "héllo" is 6 bytes


def test_padding_does_not_change_a_sample():
    plugin = registry.get_plugin("byte_cnn")
    processor, encoder = plugin.build_processor(CFG), registry.build_encoder("byte_cnn", CFG).eval()
    alone = encoder(processor.collate([processor("short")]))
    padded = encoder(processor.collate([processor("short"), processor("x" * 40)]))
    n = int(alone.mask.sum())
    torch.testing.assert_close(padded.states[0, :n], alone.states[0, :n])


def test_bad_samples_are_data_errors():
    processor = registry.get_plugin("byte_cnn").build_processor(CFG)
    with pytest.raises(DataError, match="empty"):
        processor("")
    with pytest.raises(DataError, match="max_bytes=64"):
        processor("x" * 65)
