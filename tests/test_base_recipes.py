"""The data-adaptive parts of the base recipes: warmup as a share of the run, a batch budget that shrinks
on small data, early stopping on the checkpoint monitor; and translation/base training a few steps."""

from __future__ import annotations

import csv

import pytest

from mmxattn.data.batching import epoch_budget
from mmxattn.schedule import WarmupSchedule
from mmxattn.train import train

from .conftest import TINY, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_warmup_fraction_scales_with_the_run_and_inverse_sqrt_needs_no_end():
    short, long = (WarmupSchedule(schedule="inverse_sqrt", warmup_fraction=0.1) for _ in range(2))
    assert short(0) == 0.0  # unbound: nothing trains on a schedule that does not know the run yet
    short.bind(100)
    long.bind(10_000)
    assert (short.warmup, long.warmup) == (10, 1000)
    assert short(9) == pytest.approx(1.0) and long(999) == pytest.approx(1.0)
    assert short(39) == pytest.approx(0.5)  # sqrt(10 / 40)


def test_cosine_decays_to_min_ratio_at_the_runs_end():
    schedule = WarmupSchedule(schedule="cosine", min_ratio=0.1, warmup_steps=10)
    schedule.bind(110)
    assert schedule(9) == pytest.approx(1.0) and schedule(110) == pytest.approx(0.1)


@pytest.mark.parametrize(("sizes", "max_tokens", "min_batches", "expected"), [
    ([10] * 100, 4096, 100, 10),      # 1,000 tokens / 100 batches, but no lower than the longest sample
    ([20] * 10_000, 4096, 100, 2000),  # 200,000 tokens / 100 batches
    ([20] * 100_000, 4096, 100, 4096),  # big data: the configured budget
    ([20] * 100, 4096, None, 4096),   # off
])
def test_the_batch_budget_shrinks_on_small_data_only(sizes, max_tokens, min_batches, expected):
    assert epoch_budget(sizes, max_tokens, min_batches) == expected


def test_early_stopping_ends_the_run_when_validation_stops_improving(tiny_corpus, tmp_path):
    """A learning rate too small to change validation loss: patience 1 stops after the second validation."""
    cfg = compose_config([*TINY, f"data.root={tiny_corpus}", "data.synthetic=null", "data.test=null",
                          "eval.metrics=[]", "trainer.max_epochs=30", "optim.lr=1e-9", "optim.warmup_steps=1",
                          "early_stopping.patience=1", "early_stopping.min_delta=0.01"], output_dir=tmp_path / "run")
    results = train(cfg)
    assert results["global_step"] < 30 * 3  # stopped long before max_epochs
    with open(tmp_path / "run" / "metrics.csv") as f:
        validations = [row for row in csv.DictReader(f) if row.get("val/loss")]
    assert len(validations) == 2


def test_translation_base_recipe_trains_a_few_steps(tiny_corpus, tmp_path):
    cfg = compose_config(["recipe=translation/base", f"data.root={tiny_corpus}", "data.src_lang=en", "data.tgt_lang=xx",
                          "data.valid=valid", *TINY, "trainer.max_steps=4"], output_dir=tmp_path / "run")
    results = train(cfg)
    assert results["global_step"] == 4 and (tmp_path / "run" / "model.pt").is_file()
