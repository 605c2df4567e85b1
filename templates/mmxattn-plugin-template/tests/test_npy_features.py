"""Tests of the npy_features modality: encoder, processor, data format, recipe and attention view.

Run them with `python -m pytest -q` after `pip install -e .`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from mmxattn import hydra_search, registry
from mmxattn.plugin import ConfigError, DataError, SkipReport

CFG = {"name": "npy_features", "feature_dim": 3, "subsample": 1, "d_model": 16, "num_layers": 1, "num_heads": 2,
       "ffn_dim": 32, "dropout": 0.0}


def save(path, array) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(array))
    return str(path)


def frames(n: int, features: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def test_installed_plugins_are_found_by_their_entry_points():
    assert registry.available()["npy_features"].package == "mmxattn-plugin-template"
    plugin = registry.get_plugin("npy_features")
    assert plugin.input_kind == "path" and plugin.file_extensions == (".npy",)
    assert registry.get_data_format("npy_manifest").manifest == ".tsv"


def test_the_recipe_in_the_plugin_selects_encoder_and_data_format():
    hydra_search.register()  # what mmx-train does before composing
    with initialize_config_module("mmxattn.conf", version_base="1.3"):
        cfg = compose("train", overrides=["recipe=npy_features_base", "data.root=somewhere", "encoder.feature_dim=5"])
    assert cfg.encoder.name == "npy_features" and cfg.encoder.feature_dim == 5
    assert cfg.data.format == "npy_manifest" and cfg.data.root == "somewhere" and cfg.name == "npy-features"


def test_processor_collate_and_encoder_honour_the_contract(tmp_path):
    processor = registry.build_processor("npy_features", CFG, train=True)
    encoder = registry.build_encoder("npy_features", CFG).eval()
    paths = [save(tmp_path / "a.npy", frames(4)), save(tmp_path / "b.npy", frames(7, seed=1).astype(np.float64))]
    batch = processor.collate([processor(p) for p in paths])
    assert batch["features"].shape == (2, 7, 3) and batch["features"].dtype == torch.float32
    assert batch["mask"].sum(1).tolist() == [processor.length(p) for p in paths] == [4, 7]
    context = registry.check_context("npy_features", encoder(batch), batch_size=2)
    assert context.states.shape == (2, 7, encoder.output_dim)


def test_padding_does_not_change_a_sample(tmp_path):
    processor, encoder = registry.build_processor("npy_features", CFG), registry.build_encoder("npy_features", CFG).eval()
    short, long = save(tmp_path / "s.npy", frames(3)), save(tmp_path / "l.npy", frames(11, seed=2))
    alone = encoder(processor.collate([processor(short)]))
    padded = encoder(processor.collate([processor(short), processor(long)]))
    torch.testing.assert_close(padded.states[0, :3], alone.states[0])


def test_subsample_averages_frames(tmp_path):
    processor = registry.build_processor("npy_features", {**CFG, "subsample": 2})
    path = save(tmp_path / "x.npy", np.arange(15, dtype=np.float32).reshape(5, 3))
    features = processor(path)
    assert features.shape == (3, 3) and processor.length(path) == 3
    torch.testing.assert_close(features[0], torch.tensor([1.5, 2.5, 3.5]))
    torch.testing.assert_close(features[2], torch.tensor([12.0, 13.0, 14.0]))  # the last group holds one frame


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 2), np.float32), "has 2 features per frame .* encoder.feature_dim=3"),
    (np.zeros((2, 4, 3), np.float32), r"shape \(2, 4, 3\) \(3-D\); expected 2-D"),
    (np.zeros((0, 3), np.float32), "no frames"),
    (np.array([[0.0, np.nan, 1.0]], np.float32), "non-finite value.* frame 0, feature 1"),
    (np.array([["a", "b", "c"]]), "values; features must be numbers"),
])
def test_bad_files_are_data_errors_naming_the_file(tmp_path, array, message):
    processor = registry.build_processor("npy_features", CFG)
    path = save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message) as error:
        processor(path)
    assert str(path) in str(error.value)
    assert processor.length(path) >= 1  # sizing a bad file never raises: loading it reports the problem


def test_missing_and_non_npy_files_are_data_errors(tmp_path):
    processor = registry.build_processor("npy_features", CFG)
    with pytest.raises(DataError, match="feature file not found"):
        processor(str(tmp_path / "nope.npy"))
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(DataError, match="cannot be read as a NumPy .npy array"):
        processor(str(tmp_path / "text.npy"))
    with pytest.raises(DataError, match="is a folder"):
        processor(str(tmp_path))


def test_bad_config_values_are_config_errors():
    with pytest.raises(ConfigError, match="divisible"):
        registry.build_encoder("npy_features", {**CFG, "num_heads": 3})
    with pytest.raises(ConfigError, match="encoder.subsample=0"):
        registry.build_processor("npy_features", {**CFG, "subsample": 0})


# ---------------------------------------------------------------------------------------------------
# The data format


def data_cfg(root, **extra):
    return OmegaConf.create({"format": "npy_manifest", "root": str(root), "train": "train", "valid": "valid",
                             "skip_invalid": False, **extra})


def write_manifest(root, rows, header="id\tfeatures\ttext", name="train.tsv"):
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_manifest_rows_become_samples(tmp_path):
    save(tmp_path / "feats" / "a.npy", frames(2))
    write_manifest(tmp_path, ["a\tfeats/a.npy\tred blue", "", "b\tfeats/a.npy\tgold"])
    read = registry.get_data_format("npy_manifest").read
    samples = read(data_cfg(tmp_path), "train", SkipReport())
    assert [(s.id, s.target, s.where) for s in samples] == [
        ("a", "red blue", f"{tmp_path / 'train.tsv'}:2"), ("b", "gold", f"{tmp_path / 'train.tsv'}:4")]
    assert samples[0].sources == {"src": str(tmp_path / "feats" / "a.npy")}


@pytest.mark.parametrize("rows, message", [
    (["a\tfeats/missing.npy\tred"], r"train.tsv:2: feature file .*missing.npy not found"),
    (["a\tfeats/a.npy"], "train.tsv:2: 2 tab-separated fields, but the header has 3"),
    (["a\tfeats/a.npy\t "], "train.tsv:2: the text column is empty"),
    (["a\t\tred"], "train.tsv:2: the features column is empty"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    save(tmp_path / "feats" / "a.npy", frames(2))
    write_manifest(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        registry.get_data_format("npy_manifest").read(data_cfg(tmp_path), "train", SkipReport())


def test_bad_header_and_missing_manifest(tmp_path):
    write_manifest(tmp_path, ["a\tb"], header="id\tpath")
    with pytest.raises(DataError, match="train.tsv:1: the header lacks column.*features, text"):
        registry.get_data_format("npy_manifest").read(data_cfg(tmp_path), "train", SkipReport())
    with pytest.raises(DataError, match="valid.tsv: manifest not found for data.valid=valid .*train.tsv"):
        registry.get_data_format("npy_manifest").read(data_cfg(tmp_path), "valid", SkipReport())


def test_skip_invalid_drops_and_counts_bad_rows(tmp_path):
    save(tmp_path / "feats" / "a.npy", frames(2))
    write_manifest(tmp_path, ["a\tfeats/a.npy\tred", "b\tfeats/gone.npy\tred", "c\tfeats/a.npy\t"])
    skipped = SkipReport()
    samples = registry.get_data_format("npy_manifest").read(data_cfg(tmp_path, skip_invalid=True), "train", skipped)
    assert [s.id for s in samples] == ["a"]
    assert skipped.counts == {"missing features": 1, "empty target": 1}


def test_generation_reads_manifests_without_text(tmp_path):
    save(tmp_path / "feats" / "a.npy", frames(2))
    write_manifest(tmp_path, ["a\tfeats/a.npy", "b\tfeats/a.npy\t", "c\tfeats/a.npy\tred"], name="in.tsv")
    write_manifest(tmp_path, ["d\tfeats/a.npy"], header="id\tfeatures", name="bare.tsv")
    fmt = registry.get_data_format("npy_manifest")
    read = [fmt.read_file(tmp_path / name, data_cfg("elsewhere"), SkipReport()) for name in ("in.tsv", "bare.tsv")]
    assert [[(s.id, s.target) for s in samples] for samples in read] == [[("a", ""), ("b", ""), ("c", "red")], [("d", "")]]


# ---------------------------------------------------------------------------------------------------
# The attention view


def test_view_draws_attention_above_the_features(tmp_path):
    from matplotlib.figure import Figure

    processor = registry.build_processor("npy_features", {**CFG, "subsample": 2})
    path = save(tmp_path / "x.npy", frames(9))
    view = processor.describe_context(path, n_positions=5)
    assert view.kind == "features" and view.position_labels(5) == ["t0-1", "t2-3", "t4-5", "t6-7", "t8-8"]
    weights = np.random.default_rng(0).dirichlet(np.ones(5), size=3)  # [T=3, S=5]
    fig = Figure(figsize=view.figure_size(3, 5))
    view.draw(fig, weights, ["red", "gold", "</s>"], "a title")
    fig.savefig(tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000
    assert "frame" in [ax.get_xlabel() for ax in fig.axes]
