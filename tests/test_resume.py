"""A run stopped mid-epoch and restarted with ckpt_path=last repeats the uninterrupted run exactly.

Like torchtune's test_training_state_on_resume: train once without a stop (the reference), then stop a
second run (SIGTERM, or SIGKILL with only the periodic checkpoint to fall back on), resume it, and compare
what every training step saw (its samples) and computed (its summed loss), read from `trace_data`.
Dropout stays on: the RNG state travels in the checkpoint. On CPU the repeat is exact; the stated
tolerance (relative 1e-6) only allows for summation order.

Planned stops too: a run that `trainer.max_steps` or `trainer.max_time` ended (mid-epoch or at an epoch's
end), continued with ckpt_path=last and a later limit, repeats the run that never stopped, down to the step
numbers it logs (metrics.csv).
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from mmxattn.errors import TrainingInterrupted
from mmxattn.train import train

from .conftest import TINY, compose_config
from .run_helpers import cli_env, read_trace

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [
    *TINY, "data.synthetic=null", "data.max_tokens=600", "trainer.max_epochs=2", "eval.metrics=[]",
    "data.test=null", "trace_data=true",
    "checkpoint.every_n_steps=4", "optim.warmup_steps=3",
]


def trace(run) -> dict[tuple[int, int], tuple[float, str]]:
    """(step, batch) -> (summed loss, sample ids); a step repeated after a resume keeps its last line."""
    return {(step, batch): (loss, ids) for step, _, batch, loss, ids in read_trace(run / "trace" / "rank0.tsv")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    from mmxattn.quickstart.translation import write_corpus

    root = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(root / "corpus", train=200, valid=16, test=4, seed=5)
    run = root / "reference"
    train(compose_config([*RUN, f"data.root={corpus}"], output_dir=run))
    return corpus, trace(run)


def assert_same_training(expected, got):
    assert got.keys() == expected.keys()  # every step ran, none twice (for replays the last counts)
    for key, (loss, ids) in expected.items():
        assert got[key][1] == ids, f"step/batch {key} saw other samples"
        assert got[key][0] == pytest.approx(loss, rel=1e-6), f"step/batch {key}"


@pytest.mark.parametrize("stop_at", [6, 13])  # mid-epoch 0, and mid-epoch 1 (11 batches per epoch)
def test_sigterm_saves_a_checkpoint_and_resume_repeats_the_run(reference, tmp_path, stop_at):
    corpus, expected = reference
    run = tmp_path / "run"
    stop = ["+callbacks.stop._target_=tests.fault_injection.SignalAtStep", f"+callbacks.stop.step={stop_at}"]
    with pytest.raises(TrainingInterrupted):  # Lightning finishes the batch, we save last.ckpt, then it stops
        train(compose_config([*RUN, f"data.root={corpus}", *stop], output_dir=run))
    assert {k for k in trace(run)} == {k for k in expected if k[0] <= stop_at}  # it did stop early
    train(compose_config([*RUN, f"data.root={corpus}", "ckpt_path=last"], output_dir=run))
    assert_same_training(expected, trace(run))


def test_hard_kill_resumes_from_the_periodic_checkpoint(reference, tmp_path):
    corpus, expected = reference
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "mmxattn.cli.train", "recipe=translation/quickstart", *RUN, f"data.root={corpus}",
        f"hydra.run.dir={run}",
        "+callbacks.stop._target_=tests.fault_injection.SignalAtStep", "+callbacks.stop.step=10",
        "+callbacks.stop.signal=KILL",
    ]
    killed = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert max(step for step, _ in trace(run)) == 9  # steps 8 and 9 ran after the step-8 checkpoint
    train(compose_config([*RUN, f"data.root={corpus}", "ckpt_path=last"], output_dir=run))
    assert_same_training(expected, trace(run))


def test_ckpt_path_last_refuses_to_start_fresh_and_auto_does(reference, tmp_path):
    from mmxattn.errors import ConfigError

    corpus, _ = reference
    with pytest.raises(ConfigError, match="ckpt_path=last"):
        train(compose_config([*RUN, f"data.root={corpus}", "ckpt_path=last"], output_dir=tmp_path / "a" / "run"))
    short = [*RUN, f"data.root={corpus}", "ckpt_path=auto", "trainer.max_steps=2", "trace_data=false"]
    train(compose_config(short, output_dir=tmp_path / "b"))  # nothing to resume: starts fresh
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()


# --- planned stops: max_steps, max_time --------------------------------------------------------------------

# RUN's cosine schedule decays over trainer.estimated_stepping_batches, which max_steps changes: a run stopped
# by max_steps=6 annealed towards step 6, and no continuation can make that equal a run planned to 16 steps
# (see Seq2SeqTask.configure_optimizers). inverse_sqrt does not depend on the total, so with it the stopped
# and continued run must equal the uninterrupted one exactly.
PLANNED = [*RUN, "optim.schedule=inverse_sqrt"]
STEPS_PER_EPOCH = 11


@pytest.fixture(scope="module")
def planned_reference(reference, tmp_path_factory):
    """The uninterrupted run of PLANNED: 2 epochs, 22 steps, validation after each epoch."""
    corpus, _ = reference
    run = tmp_path_factory.mktemp("planned") / "reference"
    train(compose_config([*PLANNED, f"data.root={corpus}"], output_dir=run))
    return corpus, trace(run)


def logged_steps(run) -> list[int]:
    """The step under which each training batch was logged (metrics.csv, and the parts a resume kept)."""
    steps = []
    for path in run.glob("metrics*.csv"):
        with path.open(newline="") as f:
            steps += [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    return sorted(steps)


def saved_step(run) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


def assert_continues_like_the_reference(expected, run, steps: int):
    """The stopped-and-continued run did what the reference did in its first `steps` steps, and logged them
    under the same step numbers (none twice, none missing)."""
    assert_same_training({k: v for k, v in expected.items() if k[0] < steps}, trace(run))
    assert logged_steps(run) == list(range(steps))
    assert saved_step(run) == steps


@pytest.mark.parametrize(
    "stop_at, then",
    [
        (6, 16),  # mid-epoch 0 (not a multiple of checkpoint.every_n_steps: last.ckpt is on_train_end's) to mid-epoch 1
        (STEPS_PER_EPOCH, -1),  # at the end of epoch 0 (validation follows), then without max_steps to max_epochs
    ],
    ids=["mid-epoch", "epoch-end"],
)
def test_max_steps_stop_continues_like_the_uninterrupted_run(planned_reference, tmp_path, stop_at, then):
    corpus, expected = planned_reference
    run = tmp_path / "run"
    train(compose_config([*PLANNED, f"data.root={corpus}", f"trainer.max_steps={stop_at}"], output_dir=run))
    assert trace(run).keys() == {k for k in expected if k[0] < stop_at}
    assert saved_step(run) == stop_at
    continued = [*PLANNED, f"data.root={corpus}", f"trainer.max_steps={then}", "ckpt_path=last"]
    train(compose_config(continued, output_dir=run))
    assert_continues_like_the_reference(expected, run, then if then != -1 else 2 * STEPS_PER_EPOCH)


def test_max_steps_stop_at_an_epoch_end_without_validation_then_sigterm_then_continue(planned_reference, tmp_path):
    """Stopped in an epoch's last batch with no validation after it, last.ckpt is written at on_train_end.
    Lightning has closed the epoch by then, which a continuation with max_steps set misread (it ran one
    batch of the next epoch and stopped). Reopened as in its last batch, the checkpoint resumes at the next
    epoch, which Lightning runs without counting it as started: a checkpoint from inside it (here
    SIGTERM's) then resumed at that epoch's first batch. Validation draws no random numbers, so the
    reference with validation is still the run to repeat."""
    corpus, expected = planned_reference
    run = tmp_path / "run"
    base = [*PLANNED, f"data.root={corpus}", "+trainer.limit_val_batches=0"]
    train(compose_config([*base, f"trainer.max_steps={STEPS_PER_EPOCH}"], output_dir=run))
    sigterm = ["+callbacks.stop._target_=tests.fault_injection.SignalAtStep", "+callbacks.stop.step=15"]
    with pytest.raises(TrainingInterrupted):
        train(compose_config([*base, "trainer.max_steps=22", "ckpt_path=last", *sigterm], output_dir=run))
    assert saved_step(run) == 16
    train(compose_config([*base, "ckpt_path=last"], output_dir=run))
    assert_continues_like_the_reference(expected, run, 2 * STEPS_PER_EPOCH)


@pytest.mark.parametrize("stop_after", [6, STEPS_PER_EPOCH], ids=["mid-epoch", "epoch-end"])
def test_max_time_stop_continues_like_the_uninterrupted_run(planned_reference, tmp_path, stop_after):
    """trainer.max_time installs Lightning's Timer, which sets trainer.should_stop in on_train_batch_end;
    Lightning then validates (also mid-epoch) and stops. StepClockTimer is that Timer on a clock of one second
    per batch. The continuation, with a larger limit, ends by the Timer too: 16 batches in all."""
    corpus, expected = planned_reference
    run = tmp_path / "run"
    timer = ["+callbacks.stop._target_=tests.fault_injection.StepClockTimer"]
    train(compose_config([*PLANNED, f"data.root={corpus}", *timer, f"+callbacks.stop.duration={stop_after}"],
                         output_dir=run))
    assert trace(run).keys() == {k for k in expected if k[0] < stop_after}
    assert saved_step(run) == stop_after
    continued = [*PLANNED, f"data.root={corpus}", *timer, "+callbacks.stop.duration=16", "ckpt_path=last"]
    train(compose_config(continued, output_dir=run))
    assert_continues_like_the_reference(expected, run, 16)  # logged steps: no longer one short after the resume


@pytest.mark.parametrize("stop_at, extra", [(6, []), (STEPS_PER_EPOCH, ["+trainer.limit_val_batches=0"])],
                         ids=["mid-epoch", "epoch-end-without-validation"])
def test_max_steps_checkpoint_of_an_earlier_version_resumes_right(planned_reference, tmp_path, monkeypatch,
                                                                 stop_at, extra):
    """Before the fix, last.ckpt of a max_steps stop (that no validation followed) held the state at
    on_train_end, with the epoch already closed: mid-epoch, a resume skipped the rest of it; at its end, a
    resume with max_steps set ran one batch of the next epoch and stopped. LastCheckpoint now reopens such
    an epoch when it writes a checkpoint, and also when it loads one written before."""
    from mmxattn.checkpoint import LastCheckpoint

    corpus, expected = planned_reference
    run = tmp_path / "run"
    base = [*PLANNED, f"data.root={corpus}", *extra]
    with monkeypatch.context() as old:  # what the earlier version wrote: the state Lightning has at on_train_end
        old.setattr(LastCheckpoint, "on_save_checkpoint", lambda self, trainer, pl_module, checkpoint: None)
        train(compose_config([*base, f"trainer.max_steps={stop_at}"], output_dir=run))
    progress = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["loops"]["fit_loop"]["epoch_progress"]
    assert progress["current"]["completed"] == 1  # epoch 0 counted finished
    train(compose_config([*base, "trainer.max_steps=16", "ckpt_path=last"], output_dir=run))
    assert_continues_like_the_reference(expected, run, 16)
