"""DDP on CPU with 2 gloo processes, through `mmx-train` itself (Lightning re-launches the command per rank).

One Hydra multirun of two jobs, each a 2-process DDP run, serves every test here (process start-up is
most of the cost on a small shared machine). It checks: the update equals a single process with the
same global batch, every sample is seen exactly once per epoch across the ranks, and every rank of every
sweep job works in that job's own output folder.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from mmxattn.train import train

from .conftest import TINY, compose_config
from .run_helpers import assert_same_weights, cli_env, read_trace

pytestmark = pytest.mark.usefixtures("one_thread")
# dropout off: ranks draw their dropout masks from separate RNG streams, a single process from one.
# 200 samples in batches of exactly 10 (max_sentences binds, never max_tokens): 20 batches, 10 per rank.
PARITY = [
    *TINY, "encoder.dropout=0", "decoder.dropout=0", "data.synthetic=null", "data.max_sentences=10",
    "data.max_tokens=100000", "trainer.max_epochs=2", "eval.metrics=[]",
    "data.test=null", "trace_data=true", "optim.warmup_steps=2",
]
LRS = ("2e-3", "1e-3")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mmxattn.quickstart.translation import write_corpus

    return write_corpus(tmp_path_factory.mktemp("ddp_corpus"), train=200, valid=16, test=4, seed=3)


@pytest.fixture(scope="module")
def sweep(corpus, tmp_path_factory, one_thread):
    """`mmx-train -m trainer=ddp_cpu optim.lr=2e-3,1e-3`: two sweep jobs, each with 2 DDP processes."""
    root = tmp_path_factory.mktemp("ddp_sweep")
    command = [
        sys.executable, "-m", "mmxattn.cli.train", "-m", "recipe=translation/quickstart", *PARITY,
        f"data.root={corpus}", "trainer=ddp_cpu",
        f"optim.lr={','.join(LRS)}", f"hydra.sweep.dir={root}/sweep",
    ]
    done = subprocess.run(command, cwd=root, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "sweep"


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_ddp_matches_one_process_with_the_same_global_batch(sweep, corpus, tmp_path):
    # rank r takes batches r, r+2, ...; one process accumulating 2 batches per step sees the same pairs
    cfg = compose_config([*PARITY, f"data.root={corpus}", "trainer.accumulate_grad_batches=2", f"optim.lr={LRS[0]}"],
                         output_dir=tmp_path / "single")
    train(cfg)
    assert torch.load(sweep / "0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    # the same updates up to float summation order (gloo all-reduce vs. accumulation), after 20 AdamW steps
    assert_same_weights(weights(sweep / "0"), weights(tmp_path / "single"))


def test_every_sample_is_seen_once_per_epoch_across_ranks(sweep):
    for job in ("0", "1"):
        ranks = [read_trace(sweep / job / "trace" / f"rank{r}.tsv") for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 20  # 2 epochs × 10 steps, every rank the same number
        for epoch in (0, 1):
            seen = Counter(i for rows in ranks for _, e, _, _, ids in rows if e == epoch for i in ids)
            assert sorted(seen) == list(range(200)) and set(seen.values()) == {1}, f"job {job} epoch {epoch}"
        orders = [[ids for _, e, _, _, ids in ranks[0] if e == epoch] for epoch in (0, 1)]
        assert orders[0] != orders[1]  # each epoch is reshuffled


def test_each_sweep_job_keeps_all_its_ranks_in_its_own_folder(sweep):
    for job, lr in zip(("0", "1"), LRS):
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["mmx_config"]["optim"]["lr"] == float(lr)
        assert ckpt["mmx_config"]["trainer"]["devices"] == 2
        assert sorted(p.name for p in (sweep / job / "trace").iterdir()) == ["rank0.tsv", "rank1.tsv"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # nothing written elsewhere


def test_fsdp_config_builds_a_sharded_strategy_with_one_unit_per_layer():
    from lightning.pytorch.strategies import FSDPStrategy
    from omegaconf import OmegaConf
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from mmxattn.layers import DecoderLayer, EncoderLayer
    from mmxattn.train import build_strategy

    cfg = compose_config(["trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=2"])
    strategy = build_strategy(OmegaConf.to_container(cfg.trainer, resolve=True))
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {EncoderLayer, DecoderLayer}
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.precision) == (8, 2, "bf16-mixed")


def test_slurm_launcher_preset_sizes_the_job_from_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the optional extra mmxattn[slurm]")
    from hydra import compose, initialize_config_module

    with initialize_config_module("mmxattn.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8",
                                          "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher._target_.endswith("SlurmLauncher")
