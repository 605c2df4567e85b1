"""Guards and numerics of the training step: non-finite steps are skipped, counted and stop the run when
they repeat; gradient accumulation equals one larger batch; bf16-mixed trains on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmxattn.guards import NonFiniteLossError
from mmxattn.train import train

from .conftest import TINY, compose_config
from .fault_injection import NanGradientAtSteps
from .run_helpers import assert_same_weights, read_trace

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS_ONLY = ["eval.metrics=[]", "data.test=null",
             "data.synthetic=null", "trainer.num_sanity_val_steps=0", "trainer.max_epochs=20"]


def nan_at(steps) -> list[str]:
    return ["+callbacks.nan._target_=tests.fault_injection.NanGradientAtSteps", f"+callbacks.nan.steps={list(steps)}"]


def test_a_non_finite_step_is_skipped_and_counted(tiny_cfg, tmp_path):
    NanGradientAtSteps.observed.clear()
    cfg = tiny_cfg(*LOSS_ONLY, "trainer.max_steps=6", "guard.max_nonfinite_in_row=3", "guard.check_every_n_steps=4",
                   *nan_at([2, 3]))
    train(cfg)
    observed = {step: (poisoned, changed) for step, poisoned, changed in NanGradientAtSteps.observed}
    assert sorted(observed) == [0, 1, 2, 3, 4, 5]
    for step, (poisoned, changed) in observed.items():
        assert changed != poisoned, f"step {step}: poisoned={poisoned} but weights changed={changed}"
    ckpt = torch.load(cfg.output_dir + "/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["mmx_guard"] == {"total": 2, "in_row": 0}
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_too_many_non_finite_steps_in_a_row_stop_the_run_naming_step_and_batch(tiny_cfg):
    cfg = tiny_cfg(*LOSS_ONLY, "trainer.max_steps=30", "guard.max_nonfinite_in_row=3", "guard.check_every_n_steps=4",
                   *nan_at(range(2, 30)))
    with pytest.raises(NonFiniteLossError) as error:
        train(cfg)
    message = str(error.value)
    # steps 2, 3, 4 are bad: the third in a row is step 4; found at the check after step 7 (every 4 steps)
    assert "3 optimizer steps in a row" in message and "the last was step 4 (epoch 1, batch 0:" in message
    assert "train.en:" in message and "guard.max_nonfinite_in_row=3" in message


def test_gradient_accumulation_gives_the_update_of_the_larger_batch(tmp_path, one_thread):
    from mmxattn.quickstart.translation import write_corpus

    corpus = write_corpus(tmp_path / "corpus", train=16, valid=4, test=4, seed=2)
    # 16 samples: one batch of 16, or the same 16 as two batches of 8 (max_tokens never binds); dropout off
    base = [*TINY, *LOSS_ONLY, f"data.root={corpus}", "data.max_tokens=100000", "trainer.max_epochs=3",
            "encoder.dropout=0", "decoder.dropout=0", "optim.warmup_steps=1"]
    runs = {}
    for name, overrides in {"accumulated": ["data.max_sentences=8", "trainer.accumulate_grad_batches=2"],
                            "large": ["data.max_sentences=16"]}.items():
        train(compose_config([*base, *overrides], output_dir=tmp_path / name))
        runs[name] = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
    assert runs["accumulated"]["global_step"] == runs["large"]["global_step"] == 3
    assert_same_weights(runs["accumulated"]["state_dict"], runs["large"]["state_dict"])


def test_bf16_mixed_trains_on_cpu(tiny_cfg):
    cfg = tiny_cfg(*LOSS_ONLY, "trainer.precision=bf16-mixed", "trainer.max_steps=4", "trace_data=true")
    train(cfg)
    losses = [row[3] for row in read_trace(Path(cfg.output_dir) / "trace" / "rank0.tsv")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    ckpt = torch.load(cfg.output_dir + "/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["mmx_guard"]["total"] == 0
