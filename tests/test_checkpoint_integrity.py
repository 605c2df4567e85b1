"""Checkpoints are verifiably intact and safe to load; `mmx-average` refuses checkpoints it cannot average.

Every .ckpt and export carries a checksum of its tensors; every reader (load_for_inference, the resume in
train(), Lightning's own resume load, mmx-average) refuses damaged data, a truncated file, or a pickle that
would run code, with a one-line DataError naming the file, and changes nothing in the run folder.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from mmxattn import checkpoint
from mmxattn.checkpoint import (
    CHECKSUM_KEY, AtomicCheckpointIO, load_checkpoint_file, load_for_inference, save_checkpoint_file,
    tensor_checksum, verify_checkpoint_file,
)
from mmxattn.cli.average import main as average_main
from mmxattn.errors import DataError
from mmxattn.tokenizer import Tokenizer
from mmxattn.train import train

from .conftest import TINY, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_RUN = [*TINY, "data.synthetic=null", "data.test=null", "data.max_sentences=15", "data.max_tokens=100000",
             "eval.metrics=[]"]


def run_overrides(corpus: Path, *extra: str) -> list[str]:
    return [*SMALL_RUN, f"data.root={corpus}", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """Two 1-epoch runs (4 steps) on one corpus: a 2-layer and a 3-layer decoder. {"corpus", 2, 3: run folder}."""
    from mmxattn.quickstart.translation import write_corpus

    root = tmp_path_factory.mktemp("integrity")
    corpus = write_corpus(root / "corpus", train=60, valid=8, test=4, seed=9)
    folders = {"corpus": corpus}
    for layers in (2, 3):
        folders[layers] = root / f"layers{layers}"
        train(compose_config(run_overrides(corpus, f"decoder.num_layers={layers}"), output_dir=folders[layers]))
    return folders


def flip_tensor_bytes(source: Path, target: Path) -> Path:
    """Copy `source` with 8 bytes inverted in the middle of its largest tensor entry (`<archive>/data/N`).

    torch.save writes an uncompressed zip and torch's reader checks no CRC, so the copy still loads, with
    one tensor silently changed: what a bad disk, copy or transfer does.
    """
    with zipfile.ZipFile(source) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(source.read_bytes())
    header = entry.header_offset  # local file header: 30 bytes, then the name and the extra field
    start = header + 30 + int.from_bytes(data[header + 26:header + 28], "little") + int.from_bytes(
        data[header + 28:header + 30], "little")
    middle = start + entry.file_size // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    target.write_bytes(data)
    return target


def assert_one_line_naming(error: Exception | str, path: Path, *words: str) -> None:
    message = str(error)
    assert "\n" not in message.strip() and str(path) in message, message
    for word in words:
        assert word in message, message


def average_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as stop:
        average_main([str(a) for a in args])
    assert stop.value.code == 2
    return capsys.readouterr().err.strip()


# --- the checksum ---------------------------------------------------------------------------------------


def test_checksum_round_trip_and_what_it_covers(tmp_path):
    state = {"state_dict": {"w": torch.randn(4, 3), "half": torch.randn(5).to(torch.bfloat16), "step": torch.tensor(7)},
             "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(4, 3)}}}], "epoch": 1}
    save_checkpoint_file(state, tmp_path / "a.ckpt")
    loaded = load_checkpoint_file(tmp_path / "a.ckpt")
    assert loaded[CHECKSUM_KEY] == {"algorithm": "sha256", "digest": tensor_checksum(state)}
    torch.testing.assert_close(loaded["state_dict"]["half"], state["state_dict"]["half"])

    reordered = {"epoch": 1, "optimizer_states": state["optimizer_states"],
                 "state_dict": dict(reversed(list(state["state_dict"].items())))}
    assert tensor_checksum(reordered) == tensor_checksum(state)  # the order a dict was built in does not matter
    renamed = {**state, "state_dict": {("v" if k == "w" else k): t for k, t in state["state_dict"].items()}}
    reshaped = {**state, "state_dict": {**state["state_dict"], "w": state["state_dict"]["w"].reshape(3, 4)}}
    changed = {**state, "state_dict": {**state["state_dict"], "step": torch.tensor(8)}}
    assert len({tensor_checksum(s) for s in (state, renamed, reshaped, changed)}) == 4


def test_every_file_a_run_writes_carries_a_checksum(runs):
    run = runs[2]
    for path in [run / "model.pt", *(run / "checkpoints").glob("*.ckpt")]:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert blob[CHECKSUM_KEY]["digest"] == tensor_checksum(blob), path


def test_a_checkpoint_without_checksum_still_loads_with_a_warning(runs, tmp_path, caplog):
    blob = torch.load(runs[2] / "model.pt", map_location="cpu", weights_only=True)
    del blob[CHECKSUM_KEY]
    torch.save(blob, tmp_path / "old.pt")  # as an older mmxattn wrote it
    model, _, _ = load_for_inference(tmp_path / "old.pt")
    assert "no checksum" in caplog.text and len(model.state_dict()) > 0


# --- damaged files are refused by every reader ------------------------------------------------------------


def test_flipped_tensor_bytes_are_refused_by_load_for_inference(runs, tmp_path):
    for name in ("model.pt", "checkpoints/last.ckpt"):
        damaged = flip_tensor_bytes(runs[2] / name, tmp_path / Path(name).name)
        torch.load(damaged, weights_only=True)  # torch itself notices nothing
        with pytest.raises(DataError) as error:
            load_for_inference(damaged)
        assert_one_line_naming(error.value, damaged, "corrupt", "checksum", "another checkpoint")


def test_flipped_tensor_bytes_are_refused_by_mmx_average(runs, tmp_path, capsys):
    good = runs[2] / "checkpoints" / "last.ckpt"
    damaged = flip_tensor_bytes(good, tmp_path / "damaged.ckpt")
    err = average_error(capsys, good, damaged, "-o", tmp_path / "avg.pt")
    assert_one_line_naming(err, damaged, "corrupt", "checksum")
    assert not (tmp_path / "avg.pt").exists()


def test_flipped_tensor_bytes_are_refused_when_resuming(runs, tmp_path):
    damaged = flip_tensor_bytes(runs[2] / "checkpoints" / "last.ckpt", tmp_path / "damaged.ckpt")
    cfg = compose_config(run_overrides(runs["corpus"], "decoder.num_layers=2", f"ckpt_path={damaged}"),
                         output_dir=tmp_path / "resumed")
    with pytest.raises(DataError) as error:
        train(cfg)
    assert_one_line_naming(error.value, damaged, "corrupt", "checksum")
    with pytest.raises(DataError):  # Lightning's own load, should the file be damaged after it was checked
        AtomicCheckpointIO().load_checkpoint(damaged)


def test_a_truncated_last_ckpt_stops_the_resume_and_leaves_the_run_folder_alone(runs, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(runs[2] / "metrics.csv", run / "metrics.csv")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes((runs[2] / "checkpoints" / "last.ckpt").read_bytes()[:5000])  # a copy cut short
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    cfg = compose_config(run_overrides(runs["corpus"], "decoder.num_layers=2", "ckpt_path=last"), output_dir=run)
    with pytest.raises(DataError) as error:
        train(cfg)
    assert_one_line_naming(error.value, last, "truncated")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # metrics.csv not moved aside, nothing new


def test_a_resume_reads_through_the_checked_loader(runs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(runs[2], run)
    reads, real_load = [], checkpoint.load_checkpoint_file

    def spy(path, **kwargs):
        reads.append((Path(path).name, kwargs.get("what")))
        return real_load(path, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint_file", spy)
    train(compose_config(run_overrides(runs["corpus"], "decoder.num_layers=2", "trainer.max_epochs=2",
                                       "ckpt_path=last"), output_dir=run))
    assert reads.count(("last.ckpt", "checkpoint to resume from")) == 2  # resolve_resume, then Lightning
    assert (run / "metrics.part1.csv").is_file()


def test_lightning_does_not_hash_again_what_resolve_resume_just_verified(runs, tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    shutil.copy(runs[2] / "checkpoints" / "last.ckpt", path)
    verify_checkpoint_file(path)
    real_checksum = checkpoint.tensor_checksum
    monkeypatch.setattr(checkpoint, "tensor_checksum", lambda *a, **k: pytest.fail("hashed twice"))
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 4
    monkeypatch.setattr(checkpoint, "tensor_checksum", real_checksum)
    verify_checkpoint_file(path)
    flip_tensor_bytes(runs[2] / "checkpoints" / "last.ckpt", path)  # the file changes after it was checked
    with pytest.raises(DataError, match="checksum"):
        AtomicCheckpointIO().load_checkpoint(path)


# --- a pickle that would run code is never executed ---------------------------------------------------------


def _write_marker(path: str) -> None:  # what unpickling the malicious checkpoint would call
    Path(path).write_text("code ran")


class RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _write_marker, (self.marker,)


def test_a_pickle_that_would_run_code_is_refused_even_with_torch_force_no_weights_only_load(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    blob = torch.load(runs[2] / "model.pt", map_location="cpu", weights_only=True)
    evil = tmp_path / "model.pt"
    torch.save({**blob, "config": {**blob["config"], "payload": RunsCodeWhenUnpickled(marker)}}, evil)
    for load in (load_checkpoint_file, load_for_inference, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(DataError) as error:
            load(evil)
        assert_one_line_naming(error.value, evil, "refused", "_write_marker")
        assert not marker.exists()
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(evil)  # control: without an explicit weights_only=True the variable makes torch run it
    assert marker.read_text() == "code ran"


# --- mmx-average refuses what cannot be averaged -----------------------------------------------------------


@pytest.mark.parametrize("order", [(2, 3), (3, 2)])
def test_mmx_average_refuses_different_architectures_in_either_order(runs, tmp_path, capsys, order):
    first, second = (runs[n] / "checkpoints" / "last.ckpt" for n in order)
    err = average_error(capsys, first, second, "-o", tmp_path / "avg.pt")
    assert_one_line_naming(err, first, str(second), "model.decoder.layers.2.", "architecture")
    assert not (tmp_path / "avg.pt").exists()


def _edited_copy(source: Path, target: Path, edit) -> Path:
    blob = torch.load(source, map_location="cpu", weights_only=True)
    edit(blob)
    save_checkpoint_file(blob, target)
    return target


def test_mmx_average_refuses_a_different_vocabulary_of_the_same_size(runs, tmp_path, capsys):
    good = runs[2] / "checkpoints" / "last.ckpt"
    other = Tokenizer.train([f"zq{i} wx{i * 7} yv{i * 13}" for i in range(300)], vocab_size=60).model_proto

    def swap_vocabulary(blob):  # same weights and shapes, other token ids: averaging would be silent garbage
        blob["mmx_tokenizers"] = {side: other for side in blob["mmx_tokenizers"]}

    swapped = _edited_copy(good, tmp_path / "other_vocab.ckpt", swap_vocabulary)
    err = average_error(capsys, good, swapped, "-o", tmp_path / "avg.pt")
    assert_one_line_naming(err, swapped, str(good), "vocabularies differ")


def test_mmx_average_refuses_another_model_config(runs, tmp_path, capsys):
    good = runs[2] / "checkpoints" / "last.ckpt"
    other = _edited_copy(good, tmp_path / "other.ckpt", lambda b: b["mmx_config"]["decoder"].update(dropout=0.3))
    err = average_error(capsys, good, other, "-o", tmp_path / "avg.pt")
    assert_one_line_naming(err, other, "decoder.dropout")


def test_mmx_average_warns_about_checkpoints_of_different_runs(runs, tmp_path, capsys):
    good = runs[2] / "checkpoints" / "last.ckpt"
    other = _edited_copy(good, tmp_path / "seed7.ckpt", lambda b: b["mmx_config"].update(seed=7))
    average_main([str(good), str(other), "-o", str(tmp_path / "avg.pt")])
    captured = capsys.readouterr()
    assert "averaged 2 checkpoints" in captured.out
    assert "different runs (seed 1234 vs 7)" in captured.err and str(other) in captured.err
    export = load_checkpoint_file(tmp_path / "avg.pt")  # an export like any other: checksum verified
    assert export[CHECKSUM_KEY]["digest"] == tensor_checksum(export)
    load_for_inference(tmp_path / "avg.pt")
