"""Training under torch.compile (`compile.train`) computes what eager training does; decoding under
torch.compile is the compile inference backend (tests/test_inference_backends.py).

Compiling takes tens of seconds even for these tiny models, so each test compiles once and checks
everything it can with that. The compiling tests are skipped where there is no C++ compiler
(torch.compile on CPU needs one).
"""

import shutil

import pytest
import torch

from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.errors import ConfigError
from mmxattn.model import build_model
from mmxattn.train import build_task


pytestmark = pytest.mark.usefixtures("one_thread")
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None, reason="torch.compile on CPU needs a C++ compiler"
)


@needs_compiler
def test_compiled_training_forward_matches_eager(tiny_cfg):
    cfg = tiny_cfg("compile.train=true", "decoder.dropout=0.0", "encoder.dropout=0.0")
    datamodule = Seq2SeqDataModule.from_config(cfg)
    datamodule.prepare(("train",))
    batch = next(iter(datamodule.loader("train", shuffle=False)))
    assert not bool(batch["inputs"]["src"]["mask"].all()), "the batch should hold padding"
    torch.manual_seed(0)
    eager = build_model(cfg, datamodule.tokenizers)
    compiled = build_model(cfg, datamodule.tokenizers)
    compiled.load_state_dict(eager.state_dict())
    task = build_task(cfg, compiled)  # compiles its model in place

    results = []
    for model in (eager, task.model):
        logits = model(batch["inputs"], batch["target_in"])  # [B, T, V]
        logits.float().logsumexp(-1).mean().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits_a, grads_a), (logits_b, grads_b) = results
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5, msg=name)
    assert task.state_dict().keys() == build_task(cfg, eager).state_dict().keys()


def test_compile_without_a_cpp_compiler_is_a_config_error(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("compile.train=true")
    datamodule = Seq2SeqDataModule.from_config(cfg)
    datamodule.prepare(("train",))
    model = build_model(cfg, datamodule.tokenizers)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler.*compile.train=false"):
        build_task(cfg, model)


@needs_compiler
@pytest.mark.slow  # compiles training and validation: minutes on 2 cores
def test_mmx_train_with_compile_runs_end_to_end(tiny_corpus, tmp_path):
    from .conftest import TINY
    from .test_cli import run

    run_dir = tmp_path / "run"
    run(
        "mmx-train", "recipe=translation/quickstart", *TINY, f"data.root={tiny_corpus}", "data.synthetic=null",
        "trainer.max_epochs=2", "compile.train=true", "generation.beam_size=2",
        f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )
    hypotheses = (run_dir / "test.hyp").read_text().splitlines()
    assert len(hypotheses) == 24 and any(hypotheses)
    assert "_orig_mod" not in "".join(torch.load(run_dir / "model.pt", weights_only=False)["state_dict"])
