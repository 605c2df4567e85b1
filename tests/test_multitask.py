"""Multitask runs: the mix of task batches, prompts that steer one decoder, per-task metrics, --task."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import mmxattn.conf
from mmxattn.cli import evaluate as eval_cli
from mmxattn.cli import generate as generate_cli
from mmxattn.data.multitask import (MultiTaskDataModule, TaskMixBatchSampler, exact_counts, mix_probabilities,
                                    task_specs)
from mmxattn.errors import ConfigError
from mmxattn.generation import GenerationConfig, generate
from mmxattn.model import build_model
from mmxattn.train import train

from .conftest import TINY, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

PARALLEL_TEXT = OmegaConf.load(Path(mmxattn.conf.__file__).parent / "data" / "parallel_text.yaml")
WORDS = "red blue green small big cat dog bird runs sees the a".split()


def write_task(root: Path, target: str, sizes=(("train", 160), ("valid", 12), ("test", 12)), seed=0) -> Path:
    """Random English-like sources, every target the same sentence: the task is told by its output."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for split, n in sizes:
        sources = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) for _ in range(n)]
        (root / f"{split}.en").write_text("".join(s + "\n" for s in sources))
        (root / f"{split}.xx").write_text("".join(target + "\n" for _ in sources))
    return root


def data_section(root: Path, **extra):
    return OmegaConf.merge(PARALLEL_TEXT, {"root": str(root), "src_lang": "en", "tgt_lang": "xx", "valid": "valid",
                                           "test": "test", "max_tokens": 400}, extra)


def multitask_cfg(tmp_path: Path, tasks: dict, *overrides):
    cfg = compose_config(["recipe=none", "data=multitask", *TINY, *overrides], output_dir=tmp_path / "run")
    OmegaConf.update(cfg, "tasks", tasks, force_add=True)
    return cfg


@pytest.fixture
def two_tasks(tmp_path):
    return {
        "left": {"data": data_section(write_task(tmp_path / "left", "alpha beta gamma delta")), "prompt": "<left>"},
        "right": {"data": data_section(write_task(tmp_path / "right", "one two three four five", seed=1)),
                  "prompt": "<right>"},
    }


# ---------------------------------------------------------------------------------------------------
# The mix


def test_schedules_share_batches_exactly():
    sizes = {"big": 9000, "small": 1000}
    assert mix_probabilities(sizes, {"schedule": "proportional"}, {}) == pytest.approx({"big": 0.9, "small": 0.1})
    flat = mix_probabilities(sizes, {"schedule": "temperature", "temperature": 5.0}, {})
    assert flat["small"] == pytest.approx(1000**0.2 / (9000**0.2 + 1000**0.2))  # p ∝ n^(1/T)
    fixed = mix_probabilities(sizes, {"schedule": "weights"}, {"big": 1.0, "small": 3.0})
    assert fixed == pytest.approx({"big": 0.25, "small": 0.75})
    own = mix_probabilities(sizes, {"schedule": "batches"}, {}, batches={"big": 30, "small": 20})
    assert own == pytest.approx({"big": 0.6, "small": 0.4})  # each task its own number of batches per epoch
    counts = exact_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]


def _sampler(**kwargs):
    sizes = [[5] * 60, [7] * 20, [3] * 10]  # three tasks: 60, 20 and 10 samples
    defaults = dict(budgets=[(20, None)] * 3, probabilities=[0.2, 0.3, 0.5], shuffle=True, seed=3)
    return TaskMixBatchSampler(sizes, **{**defaults, **kwargs})


def _task(index: int) -> int:
    return 0 if index < 60 else 1 if index < 80 else 2


def test_every_batch_is_one_task_and_the_epoch_mix_is_exact_and_reproducible():
    sampler = _sampler()
    batches = sampler.batches()
    assert all(len({_task(i) for i in b}) == 1 for b in batches)
    per_task = Counter(_task(b[0]) for b in batches)
    natural = 60 // 4 + 20 // 2 + 10 // 6 + 1  # batches of 4, 2 and 6 samples: 15 + 10 + 2
    assert sum(per_task.values()) == natural
    assert per_task == exact_counts({0: 0.2, 1: 0.3, 2: 0.5}, natural)
    assert _sampler().batches() == batches  # the same seed and epoch: the same batches
    sampler.set_epoch(1)
    assert sampler.batches() != batches
    # the small task, upsampled, repeats its data: every one of its samples appears
    assert {i for b in batches if _task(b[0]) == 2 for i in b} == set(range(80, 90))


def test_ranks_share_the_epoch_and_resume_mid_epoch():
    whole = _sampler().batches()
    ranks = [_sampler(num_replicas=2, rank=r).batches() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # 27 batches: one is split in two so that each rank gets 14
    assert sorted(i for b in ranks[0] + ranks[1] for i in b) == sorted(i for b in whole for i in b)
    assert all(len({_task(i) for i in b}) == 1 for b in ranks[0] + ranks[1])
    resumed = _sampler()
    resumed.resume(0, 5)
    assert list(resumed) == whole[5:]


def test_evaluation_reads_every_sample_of_every_task_once():
    sampler = _sampler(probabilities=None, shuffle=False)
    indices = [i for b in sampler.batches() for i in b]
    assert sorted(indices) == list(range(90))


# ---------------------------------------------------------------------------------------------------
# Bad config: one message naming the key


@pytest.mark.parametrize(("change", "message"), [
    ({"left": {"sources": {"src": "nope"}}}, r"tasks.left.sources.src=nope: the model has no encoder 'nope'"),
    ({"left": {"data": {"format": "nope"}}}, r"tasks.left.data.format=nope"),
    ({"right": {"prompt": "<left>"}}, r"tasks.right.prompt=\['<left>'\] is also the prompt of tasks.left"),
    ({"left": {"weight": -1}}, r"tasks.left.weight=-1 must be a positive number"),
    ({"left": {"metrics": ["blue"]}}, r"tasks.left.metrics: .*unknown \['blue'\]"),
    ({"left": {"train_fraction": 0}}, r"tasks.left.train_fraction=0 must be in \(0, 1\]"),
])
def test_bad_task_config_names_the_key(two_tasks, tmp_path, change, message):
    tasks = OmegaConf.merge(two_tasks, change)
    with pytest.raises(ConfigError, match=message):
        task_specs(multitask_cfg(tmp_path, tasks))


def test_empty_task_and_tag_in_the_text_are_refused(two_tasks, tmp_path):
    with pytest.raises(ConfigError, match=r"tasks.left is empty"):
        task_specs(multitask_cfg(tmp_path, {**two_tasks, "left": {}}))
    tasks = OmegaConf.merge(two_tasks, {"right": {"prompt": "alpha"}})  # a word of task left's targets
    module = MultiTaskDataModule.from_config(multitask_cfg(tmp_path, tasks))
    with pytest.raises(ConfigError, match=r"tasks.right.prompt: the tag alpha occurs in the training text of task "
                                          r"left \(.*left/train.en:1\)"):
        module.prepare(("train",))


# ---------------------------------------------------------------------------------------------------
# One model, two tasks: the prompt decides


def test_the_prompt_steers_one_model_and_each_task_is_scored_on_its_own(two_tasks, tmp_path, capsys):
    cfg = multitask_cfg(tmp_path, two_tasks, "trainer.max_epochs=40", "optim.lr=3e-3", "optim.warmup_steps=10",
                        "decoder.d_model=64", "decoder.num_heads=4", "eval.generation.max_len=40",
                        "generation.max_len=40", "generation.beam_size=2")
    results = train(cfg)  # 600 steps, a few seconds
    run = Path(results["output_dir"])
    # both tasks' test sets have the same kind of sources: only the prompt tells the model which output is asked
    assert results["test_left_bleu"] > 90 and results["test_right_bleu"] > 90, results
    assert results["test_score"] == pytest.approx((results["test_left_bleu"] + results["test_right_bleu"]) / 2)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/left/bleu", "val/right/bleu", "val/score"} <= set(header)
    assert (run / "test.left.hyp").read_text().splitlines()[0] == "alpha beta gamma delta"

    # the same input, two prompts, two outputs: from the CLI ...
    (tmp_path / "in.txt").write_text("the red cat sees a bird\n")
    for task, expected in (("left", "alpha beta gamma delta"), ("right", "one two three four five")):
        generate_cli.main([str(run), "--task", task, str(tmp_path / "in.txt"), "--beam-size", "1"])
        assert capsys.readouterr().out.strip() == expected
    with pytest.raises(SystemExit):
        generate_cli.main([str(run), str(tmp_path / "in.txt")])
    assert "choose one with --task NAME (its tasks: left, right)" in capsys.readouterr().err
    eval_cli.main([str(run), "--task", "right", "--json"])
    assert json.loads(capsys.readouterr().out)["right/bleu"]["score"] == pytest.approx(results["test_right_bleu"])


def test_decoding_with_a_prompt_equals_the_teacher_forced_forward(tmp_path, two_tasks):
    """Incremental decoding after a prompt reads the same states as the full forward pass over BOS + prompt."""
    cfg = multitask_cfg(tmp_path, two_tasks)
    module = MultiTaskDataModule.from_config(cfg)
    module.prepare(("train",))
    torch.manual_seed(0)
    model = build_model(cfg, module.tokenizers).eval()
    batch = next(iter(module.loader("train", shuffle=False)))
    prompt = list(batch["prompt"])
    context = model.encode(batch["inputs"])
    hyps = generate(model.decoder, context, GenerationConfig(strategy="greedy", max_len=6), prompt=prompt)
    for row, hyp in enumerate(hyps):
        tokens = torch.tensor([[2, *prompt, *hyp[0].tokens]])  # BOS, prompt, the greedy output
        one = type(context)(context.states[row : row + 1], context.mask[row : row + 1])
        logits = model.decoder(tokens, one)[0][0, len(prompt):]  # the rows that predicted the output
        assert logits.argmax(-1)[: len(hyp[0].tokens)].tolist() == hyp[0].tokens


# ---------------------------------------------------------------------------------------------------
# The real-data recipe: CoVoST 2 speech translation joint with its text pairs, on tiny generated data


def test_covost_joint_recipe_trains_a_few_steps(tmp_path):
    from mmxattn.quickstart.speech import write_speech_corpus

    from .test_speech_data import SHORT_RUN, fairseq_covost

    corpus = write_speech_corpus(tmp_path / "speech", train=24, valid=6, test=6, seed=3)
    root = fairseq_covost(corpus, tmp_path / "covost")
    short = [o.replace("encoder.", "encoders.speech.").replace("data.", "tasks.speech.data.") for o in SHORT_RUN]
    tiny = [o.replace("encoder.", "encoders.text.") for o in TINY]
    cfg = compose_config(["recipe=multitask/covost_joint", f"data.root={root}", *tiny, *short,
                          "encoders.speech.d_model=32", "encoders.speech.num_layers=1", "encoders.speech.ffn_dim=64",
                          "tasks.text.data.max_tokens=1500", "data.num_workers=0", "tasks.speech.data.num_workers=0"],
                         output_dir=tmp_path / "run")
    results = train(cfg)
    assert {"test_speech_bleu", "test_text_bleu", "val_speech_bleu"} <= set(results), results
    assert len((tmp_path / "run" / "test.speech.hyp").read_text().splitlines()) == 6


def test_ddp_trains_tasks_whose_batches_leave_an_encoder_unused(tmp_path):
    """Two processes, two tasks with an encoder each: every step leaves one encoder without gradient. With
    plain `strategy=ddp` that would stop DDP; a multitask run switches it to find unused parameters."""
    import subprocess
    import sys

    from mmxattn.quickstart.speech import write_speech_corpus

    from .run_helpers import cli_env

    corpus = write_speech_corpus(tmp_path / "speech", train=24, valid=6, test=4, seed=3)
    command = [
        sys.executable, "-m", "mmxattn.cli.train", "recipe=multitask/speech_low_resource",
        f"tasks.speech.data.root={corpus}", "tasks.speech.data.synthetic=null", f"tasks.text.data.root={corpus}",
        "tasks.speech.train_fraction=0.5", "tasks.speech.data.min_batches_per_epoch=4",
        "tasks.text.data.min_batches_per_epoch=4", "trainer=ddp_cpu", "trainer.strategy=ddp", "trainer.max_epochs=1",
        "encoders.speech.conv_channels=16", "encoders.speech.d_model=32", "encoders.speech.num_layers=1",
        "encoders.text.d_model=32", "encoders.text.num_layers=1", "decoder.d_model=32", "decoder.num_layers=1",
        "generation.max_len=6", "eval.generation.max_len=6", "tokenizer.vocab_size=40", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    # about 15 s; a rank that waits for another (a metric logged by one rank only) would hang until the timeout
    done = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"test_speech_bleu", "test_text_bleu"} <= set(results)
