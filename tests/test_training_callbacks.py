"""The callbacks split out of the task (mmxattn/training/): validation metrics, trace files, RNG state.

The validation callback is run by a real Lightning Trainer around a stub model whose hypotheses get
better, then worse, epoch by epoch: ModelCheckpoint and EarlyStopping must see the `val/<metric>` it
logs, wherever it stands in the callbacks list. The full runs (tests/test_resume.py, test_base_recipes.py,
test_checkpoint_integrity.py) check the same callbacks inside `train(cfg)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn

from mmxattn.errors import ConfigError
from mmxattn.generation import GenerationConfig, Hypothesis
from mmxattn.training.rng import CHECKPOINT_KEY, RngState
from mmxattn.training.trace import TraceData, describe_train_samples
from mmxattn.training.validation import ValidationDecoding

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["zero", "one", "two", "three", "four", "five"]
# per epoch, how many of the 4 validation samples the stub model gets right: WER 75, 0, 150, 150 (a wrong
# hypothesis has 3 words for 2: 2 substitutions and 1 insertion)
RIGHT_PER_EPOCH = [2, 4, 0, 0]


@dataclass
class Sample:
    target: str
    where: str

    @property
    def references(self) -> list[str]:
        return [self.target]

    @property
    def sources(self) -> dict[str, str]:
        return {"src": self.where}


class WordTokenizer:
    def decode(self, ids) -> str:
        return " ".join(WORDS[i] for i in ids)


class StubModel(nn.Module):
    """Decodes sample i as its reference while `right` > i, as garbage after."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.right = 0

    def generate(self, inputs, gen: GenerationConfig, prompt=()) -> list[list[Hypothesis]]:
        assert gen.max_len <= 2 * 3 + 10  # capped near the references' length (target_in is [B, 3])
        return [[Hypothesis(tokens=[i, i] if i < self.right else [5, 5, 5], score=0.0)] for i in inputs.tolist()]


class StubTask(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = StubModel()

    def training_step(self, batch, batch_idx):
        return (self.model.weight * 0.0).sum() + 1.0

    def on_validation_epoch_start(self):
        self.model.right = RIGHT_PER_EPOCH[self.current_epoch]

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class StubData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        samples = [Sample(f"{w} {w}", f"valid:{i + 1}") for i, w in enumerate(WORDS[:4])]  # the references of 0..3
        self.splits = {"valid": SimpleNamespace(samples=samples)}

    def _batches(self):
        index = torch.arange(4)  # sample indices [B]
        return [{"inputs": index, "target_in": torch.zeros(4, 3, dtype=torch.long), "index": index}]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self._batches(), batch_size=None)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self._batches(), batch_size=None)


def fit(tmp_path, validation, *, validation_last: bool, epochs: int = 3, patience: int = 5):
    checkpointing = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/wer", mode="min", save_top_k=1)
    # strict: EarlyStopping raises when its monitor was not logged before it looks
    stopping = EarlyStopping(monitor="val/wer", mode="min", patience=patience, check_on_train_epoch_end=False)
    others = [checkpointing, stopping]
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[*others, validation] if validation_last else [validation, *others],
    )
    trainer.fit(StubTask(), datamodule=StubData())
    return trainer, checkpointing


@pytest.mark.parametrize("validation_last", [False, True], ids=["listed-first", "listed-last"])
def test_the_validation_metrics_choose_the_best_checkpoint(tmp_path, validation_last):
    validation = ValidationDecoding(["wer", "bleu"], GenerationConfig(strategy="greedy"), WordTokenizer())
    trainer, checkpointing = fit(tmp_path, validation, validation_last=validation_last)
    assert checkpointing.best_model_score == 0.0  # epoch 1, the only one with every sample right
    assert torch.load(checkpointing.best_model_path, weights_only=True)["epoch"] == 1
    assert {"val/wer", "val/bleu"} <= trainer.callback_metrics.keys()
    assert trainer.callback_metrics["val/wer"] == 150.0  # the last validation's
    assert validation.last_scores["wer"].value == 150.0 and validation.last_scores["bleu"].value == 0.0


def test_early_stopping_stops_on_the_logged_metric(tmp_path):
    validation = ValidationDecoding(["wer"], GenerationConfig(strategy="greedy"), WordTokenizer())
    trainer, _ = fit(tmp_path, validation, validation_last=True, epochs=4, patience=1)
    assert trainer.current_epoch == 3 and trainer.should_stop  # epoch 2 did not improve on epoch 1: stopped


def test_without_metrics_nothing_is_decoded_or_logged(tmp_path):
    validation = ValidationDecoding([], GenerationConfig(strategy="greedy"), WordTokenizer())
    model = StubTask()
    model.model.generate = None  # would fail if called
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[validation])
    trainer.fit(model, datamodule=StubData())
    assert validation.last_scores == {} and not any(k.startswith("val/") for k in trainer.callback_metrics)


def test_from_config_reads_the_eval_section_and_names_unknown_metrics():
    validation = ValidationDecoding.from_config(
        {"metrics": ["bleu"], "show_examples": 2, "generation": {"strategy": "greedy", "max_len": 50}}, WordTokenizer()
    )
    assert (validation.metrics, validation.show_examples, validation.generation.max_len) == (["bleu"], 2, 50)
    with pytest.raises(ConfigError, match="eval.metrics: unknown \\['blue'\\]"):
        ValidationDecoding(["blue"], GenerationConfig(), WordTokenizer())


# --- trace files --------------------------------------------------------------------------------------------

def test_trace_writes_one_line_per_micro_batch_with_targets(tmp_path):
    trace = TraceData(tmp_path / "run")
    trainer = SimpleNamespace(global_rank=1, global_step=7, current_epoch=2)
    task = SimpleNamespace(last_train_loss=(torch.tensor(12.5), torch.tensor(9)))
    trace.on_train_batch_start(trainer, task, {"index": torch.tensor([4, 1, 3])}, 5)
    trace.on_before_backward(trainer, task, torch.tensor(0.1))
    task.last_train_loss = None  # a micro-batch whose samples were all skipped: no line
    trace.on_train_batch_start(trainer, task, {"index": torch.tensor([0])}, 6)
    trace.on_before_backward(trainer, task, torch.tensor(0.0))
    trace.teardown(trainer, task, "fit")
    trace.on_train_batch_start(trainer, task, {"index": torch.tensor([2])}, 7)  # reopened, appended to
    task.last_train_loss = (torch.tensor(1.0), torch.tensor(2))
    trace.on_before_backward(trainer, task, torch.tensor(0.0))
    trace.teardown(trainer, task, "fit")
    lines = (tmp_path / "run" / "trace" / "rank1.tsv").read_text().splitlines()
    assert lines == ["7\t2\t5\t12.5\t9\t4,1,3", "7\t2\t7\t1.0\t2\t2"]


def test_training_samples_are_named_by_where_they_come_from():
    samples = [SimpleNamespace(where=f"train.en:{i + 1}") for i in range(10)]
    trainer = SimpleNamespace(datamodule=SimpleNamespace(splits={"train": SimpleNamespace(samples=samples)}))
    assert describe_train_samples(trainer, [3, 0]) == "samples train.en:4, train.en:1"
    assert describe_train_samples(trainer, list(range(9))).endswith("train.en:8 ...")
    assert describe_train_samples(None, [3, 0]) == "sample indices [3, 0]"  # before a trainer is attached


# --- RNG state ----------------------------------------------------------------------------------------------

def test_rng_state_travels_in_the_checkpoint_and_is_restored_at_train_start():
    rng, task = RngState(), SimpleNamespace(device=torch.device("cpu"))
    checkpoint: dict = {}
    rng.on_save_checkpoint(None, task, checkpoint)
    expected = torch.rand(5)
    torch.rand(100)  # the state moves on after the save
    fresh = RngState()  # a resumed run: load, then train
    fresh.on_load_checkpoint(None, task, checkpoint)
    torch.rand(3)  # drawn between the load and the start of training: not what the restored state draws
    fresh.on_train_start(None, task)
    torch.testing.assert_close(torch.rand(5), expected, rtol=0, atol=0)


def test_a_checkpoint_of_the_task_before_the_split_restores_its_rng():
    """Seq2SeqTask wrote {"mmx_rng": {"torch": state}} at the top level of the checkpoint; RngState writes the
    same key, and reads it from checkpoints of either version. One without it restores nothing."""
    task = SimpleNamespace(device=torch.device("cpu"))
    old = {"mmx_rng": {"torch": torch.get_rng_state()}, "mmx_guard": {"total": 0, "in_row": 0}}
    expected = torch.rand(4)
    rng = RngState()
    rng.on_load_checkpoint(None, task, old)
    rng.on_train_start(None, task)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
    saved: dict = {}
    rng.on_save_checkpoint(None, task, saved)
    assert CHECKPOINT_KEY == "mmx_rng" and saved.keys() == {"mmx_rng"} and saved["mmx_rng"].keys() == {"torch"}
    state = torch.get_rng_state()
    rng.on_load_checkpoint(None, task, {})  # no RNG state in it: the state is left alone
    rng.on_train_start(None, task)
    assert torch.equal(torch.get_rng_state(), state)
