"""Checkpoint files: atomic writes survive a kill mid-save; .ckpt and exports load with weights_only=True;
`mmx-average` averages the last / best N checkpoints of a run into an export."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from mmxattn.checkpoint import load_for_inference
from mmxattn.cli.average import main as average_main
from mmxattn.train import train

from .conftest import TINY, compose_config
from .run_helpers import cli_env

pytestmark = pytest.mark.usefixtures("one_thread")

KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys, torch
    from mmxattn.checkpoint import AtomicCheckpointIO

    path = sys.argv[1]
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "weights": torch.ones(1000)}, path)

    real_save = torch.save
    def save_half_then_die(obj, f, *args, **kwargs):
        f.write(b"PK" + b"\\0" * 5000)  # the start of a zip archive, as torch.save writes one
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save_half_then_die
    io.save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, path)
""")


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(path)], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["weights"], torch.ones(1000))
    leftovers = list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1  # the half-written temporary file, never renamed over last.ckpt
    from mmxattn.checkpoint import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True)["step"] == 3 and not list(tmp_path.glob(".last.ckpt.*.tmp"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """2 epochs of 4 steps; step checkpoints every 2 steps (newest 3 kept), the best 2 by val/loss kept."""
    from mmxattn.quickstart.translation import write_corpus

    root = tmp_path_factory.mktemp("ckpt")
    corpus = write_corpus(root / "corpus", train=60, valid=8, test=4, seed=9)
    overrides = [
        *TINY, f"data.root={corpus}", "data.synthetic=null", "data.max_sentences=15", "data.max_tokens=100000",
        "trainer.max_epochs=2", "eval.metrics=[]",
        "data.test=null", "checkpoint.every_n_steps=2", "checkpoint.keep_last=3", "checkpoint.keep_best=2",
    ]
    train(compose_config(overrides, output_dir=root / "run"))
    return root / "run"


def test_training_checkpoints_and_the_export_load_with_weights_only(run):
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best-step0000004.ckpt", "best-step0000008.ckpt", "last.ckpt", "step0000004.ckpt",
                     "step0000006.ckpt", "step0000008.ckpt"]
    for path in [run / "model.pt", *(run / "checkpoints").iterdir()]:
        torch.load(path, map_location="cpu", weights_only=True)  # no pickled classes inside
    from_ckpt, _, _ = load_for_inference(run / "checkpoints" / "last.ckpt")
    from_export, _, _ = load_for_inference(run / "model.pt")
    assert from_ckpt.state_dict().keys() == from_export.state_dict().keys()


def test_mmx_average_last_n_is_the_mean_of_those_weights(run, capsys):
    average_main([str(run), "--last", "3"])
    out = run / "model.avg-last3.pt"
    assert "averaged 3 checkpoints" in capsys.readouterr().out
    export = torch.load(out, map_location="cpu", weights_only=True)
    steps = [torch.load(run / "checkpoints" / f"step000000{s}.ckpt", weights_only=True)["state_dict"] for s in (4, 6, 8)]
    name = "decoder.output.weight" if "decoder.output.weight" in export["state_dict"] else next(iter(export["state_dict"]))
    expected = sum(s[f"model.{name}"] for s in steps) / 3
    torch.testing.assert_close(export["state_dict"][name], expected)
    model, tokenizers, cfg = load_for_inference(out)  # usable by mmx-generate / mmx-eval
    assert cfg.checkpoint.keep_last == 3 and len(tokenizers.target) > 4


def test_mmx_average_best_n_and_clear_errors(run, tmp_path, capsys):
    average_main([str(run), "--best", "2", "-o", str(tmp_path / "best2.pt")])
    assert "best-step0000004.ckpt" in capsys.readouterr().out
    torch.load(tmp_path / "best2.pt", weights_only=True)
    with pytest.raises(SystemExit) as stop:
        average_main([str(run), "--last", "9"])
    assert stop.value.code == 2 and "checkpoint.keep_last" in capsys.readouterr().err
