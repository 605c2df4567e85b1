"""Shared fixtures: composed real configs shrunk to tiny sizes, and tiny generated corpora."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental hub download fails fast instead of hanging

import pytest
import torch
from hydra import compose, initialize_config_module

from mmxattn.quickstart.translation import write_corpus

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = [
    "encoder.d_model=32", "encoder.num_layers=1", "encoder.num_heads=2", "encoder.ffn_dim=64",
    "decoder.d_model=32", "decoder.num_layers=1", "decoder.num_heads=2", "decoder.ffn_dim=64",
    "tokenizer.vocab_size=120", "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "progress_refresh=0",
]


def compose_config(overrides=(), output_dir=None):
    """The real `mmx-train` config composed with overrides, on top of recipe=translation/quickstart unless
    the overrides name a recipe (`recipe=none` for none): the tests' tiny corpora are in its format."""
    overrides = list(overrides)
    if not any(o.lstrip("+~").startswith("recipe") for o in overrides):
        overrides.insert(0, "recipe=translation/quickstart")
    with initialize_config_module("mmxattn.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread, for tests of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`).

    Their matmuls gain nothing from a second thread, and on a shared 2-core machine a busy core makes every
    parallel region wait: measured 3.3 s instead of 0.08 s for a ResNet step on 4 images.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small synthetic parallel corpus ({train,valid,test}.{en,xx}) shared by the session."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), train=300, valid=24, test=24, seed=7)


@pytest.fixture
def tiny_cfg(tiny_corpus, tmp_path):
    def make(*overrides):
        return compose_config(
            [*TINY, f"data.root={tiny_corpus}", "data.synthetic=null", *overrides], output_dir=tmp_path / "run"
        )

    return make
