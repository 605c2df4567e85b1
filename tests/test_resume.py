"""A run stopped mid-epoch and restarted with ckpt_path=last repeats the uninterrupted run exactly.

Like torchtune's test_training_state_on_resume: train once without a stop (the reference), then stop a
second run (SIGTERM, or SIGKILL with only the periodic checkpoint to fall back on), resume it, and compare
what every training step saw (its samples) and computed (its summed loss), read from `trace_data`.
Dropout stays on: the RNG state travels in the checkpoint. On CPU the repeat is exact; the stated
tolerance (relative 1e-6) only allows for summation order.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    from mmxattn.data.synthetic_translation import write_corpus

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
    with pytest.raises(SystemExit):  # Lightning finishes the batch, we save last.ckpt, then it exits
        train(compose_config([*RUN, f"data.root={corpus}", *stop], output_dir=run))
    assert {k for k in trace(run)} == {k for k in expected if k[0] <= stop_at}  # it did stop early
    train(compose_config([*RUN, f"data.root={corpus}", "ckpt_path=last"], output_dir=run))
    assert_same_training(expected, trace(run))


def test_hard_kill_resumes_from_the_periodic_checkpoint(reference, tmp_path):
    corpus, expected = reference
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "mmxattn.cli.train", *RUN, f"data.root={corpus}", f"hydra.run.dir={run}",
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
