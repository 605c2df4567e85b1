"""A third-party plugin, installed for real: the template package next to an mmxattn wheel, in a fresh venv.

For each of a regular (wheel) and an editable install of templates/mmxattn-plugin-template:
  build mmxattn into a wheel from a copy of this checkout (so the installed package, not the checkout,
  is under test), create a virtualenv, install both with `pip --no-deps`, then from an empty folder
  train a few steps with `mmx-train encoder=byte_cnn`, decode with `mmx-generate`, and list it with
  `mmx-encoders`.
The editable case is the one Hydra's `hydra_plugins` discovery fails on (PEP 660 import-hook finders,
hydra #2359); the test checks that the finder is really what got installed.

A whole modality from the plugin (the template's npy_features encoder, npy_manifest data format and
npy_features_base recipe), in the wheel install's venv: from an empty folder, write .npy feature files and
TSV manifests, train with the plugin's recipe, then generate from a manifest, a file and a folder, score
with mmx-eval and draw attention with mmx-attend (docs/writing-a-plugin.md, "A whole modality").

The venv must not download torch again: a `.pth` file in its site-packages names this interpreter's
site-packages, so torch & co. are found there. A plain path line in a .pth does not run the .pth files
of the directory it names, so this checkout's own editable mmxattn (an import hook installed by such a
file) stays invisible and cannot shadow the wheel under test; and importlib.metadata keeps the first
`mmxattn` distribution on sys.path, the venv's.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "templates" / "mmxattn-plugin-template"
PROJECT_FILES = ("pyproject.toml", "README.md", "mmxattn", "conf", "encoders", "recipes")
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache")

TINY_RUN = [
    "recipe=translation/quickstart", "encoder=byte_cnn", "data.root=data", "data.synthetic=null",
    "encoder.d_model=32", "encoder.num_layers=1", "decoder.d_model=32", "decoder.num_layers=1",
    "decoder.num_heads=2", "decoder.ffn_dim=64", "tokenizer.vocab_size=120", "trainer.max_epochs=1",
    "trainer.max_steps=3", "trainer.log_every_n_steps=1", "progress_refresh=0", "eval.generation.max_len=12",
    "generation.max_len=12", "generation.beam_size=2", "hydra.run.dir=run",
]


def run(cmd: list, cwd: Path, env: dict, timeout: int = 240) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"command failed with exit status {result.returncode}: {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result.stdout


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # one thread: tiny models gain nothing from more, and on a busy machine OpenMP threads fighting for
    # the cores make each step many times slower
    env.update(HF_HUB_OFFLINE="1", MMX_STRICT_PLUGINS="1", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Wheels of mmxattn (from a copy of this checkout) and of the template, plus a copy of the template."""
    root = tmp_path_factory.mktemp("plugin-install")
    src = root / "mmxattn-src"
    src.mkdir()
    for name in PROJECT_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=IGNORE)
        elif path.is_file():
            shutil.copy2(path, src / name)
    template = root / "template"
    shutil.copytree(TEMPLATE, template, ignore=IGNORE)  # building writes build/ and *.egg-info next to it
    dist = root / "dist"
    for project in (src, template):
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, project],
            cwd=root, env=clean_env())
    wheels = {w.name.split("-")[0]: w for w in dist.glob("*.whl")}
    assert set(wheels) == {"mmxattn", "mmxattn_plugin_template"}, wheels
    return {"root": root, "template": template, **wheels}


def make_venv(path: Path, env: dict) -> tuple[Path, Path]:
    """A venv without pip whose site-packages also sees this interpreter's (for torch): (python, site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path, env).strip())
    (purelib / "_host_site_packages.pth").write_text("".join(p + "\n" for p in site.getsitepackages()))
    return python, purelib


def install(built: dict, mode: str, folder: Path) -> tuple[Path, Path, dict]:
    """A venv in `folder` with the mmxattn wheel and the template (wheel or editable): (python, site-packages,
    environment with the venv's scripts first on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    python, purelib = make_venv(folder / "venv", env)
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation", "-q"]
    run(pip + [built["mmxattn"]], folder, env)
    plugin = ["-e", built["template"]] if mode == "editable" else [built["mmxattn_plugin_template"]]
    run(pip + plugin, folder, env)
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    return python, purelib, env


@pytest.fixture(scope="module")
def wheel_install(built, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The wheel install's venv, shared by the tests that only use it (installing costs seconds each time)."""
    return install(built, "wheel", tmp_path_factory.mktemp("wheel-install"))


@pytest.mark.parametrize("mode", ["wheel", "editable"])
def test_template_plugin_trains_from_an_empty_folder(built, mode, tmp_path, request):
    if mode == "wheel":
        python, purelib, env = request.getfixturevalue("wheel_install")
    else:
        python, purelib, env = install(built, mode, tmp_path)
    bin_dir = python.parent

    work = tmp_path / "empty"
    work.mkdir()
    where = json.loads(run([python, "-c", "import json, mmxattn, mmxattn_plugin_template as p; "
                                          "from mmxattn.quickstart.translation import write_corpus; "
                                          "write_corpus('data', train=160, valid=8, test=8, seed=3); "
                                          "print(json.dumps([mmxattn.__file__, p.__file__]))"], work, env))
    assert Path(where[0]).is_relative_to(purelib), f"mmxattn imported from {where[0]}, not the installed wheel"
    if mode == "editable":
        assert Path(where[1]).is_relative_to(built["template"]), where[1]
        finders = list(purelib.glob("__editable___mmxattn_plugin_template*finder.py"))
        assert finders, "setuptools did not install the import-hook finder this case is meant to exercise"
    else:
        assert Path(where[1]).is_relative_to(purelib), where[1]

    run([bin_dir / "mmx-train", *TINY_RUN], work, env)
    assert (work / "run" / "model.pt").is_file() and (work / "run" / "test.hyp").is_file()
    config = OmegaConf.load(work / "run" / ".hydra" / "config.yaml")
    assert config.encoder.name == "byte_cnn" and config.encoder.d_model == 32

    (work / "input.txt").write_text("Two small dogs chase the red ball.\nA cat sees the tree.\n")
    out = run([bin_dir / "mmx-generate", "run", "input.txt", "--max-len", "8", "--beam-size", "2"], work, env)
    assert len(out.splitlines()) == 2

    # Each of these costs a process start that imports every plugin or pytest: one per install mode.
    if mode == "editable":
        listing = run([bin_dir / "mmx-encoders"], work, env)  # strict mode: any broken plugin fails here
        row = next(line for line in listing.splitlines() if line.startswith("byte_cnn "))
        assert "mmxattn-plugin-template" in row and "pkg://mmxattn_plugin_template.conf/encoder/byte_cnn.yaml" in row
    else:  # the template's own tests pass against the installed packages
        run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", built["template"] / "tests"], work, env)


# ---------------------------------------------------------------------------------------------------
# A whole modality: the template's npy_features encoder, npy_manifest data format and recipe

WORDS = ("red", "green", "blue", "gold")  # feature channel c spelled as a word

NPY_RUN = [
    "recipe=npy_features_base", "data.root=data", "data.test=test", "encoder.feature_dim=4",
    "encoder.d_model=32", "encoder.num_layers=1", "encoder.num_heads=2", "encoder.ffn_dim=64",
    "decoder.d_model=32", "decoder.num_layers=1", "decoder.num_heads=2", "decoder.ffn_dim=64",
    "optim.warmup_steps=10", "trainer.max_steps=60", "progress_refresh=0", "generation.beam_size=2",
    "hydra.run.dir=run",
]


def write_npy_dataset(root: Path, sizes: dict[str, int], seed: int = 0) -> None:
    """The author's own data, as the plugin guide describes it: one .npy file [frames, 4] per sample in
    root/feats/, and a manifest root/<split>.tsv (`id  features  text`) per split. Each sample is 5 segments
    of 3-6 frames; in each, one channel is high, and the target spells those channels: "blue red gold red red"."""
    rng = np.random.default_rng(seed)
    (root / "feats").mkdir(parents=True)
    for split, n in sizes.items():
        rows = ["id\tfeatures\ttext"]
        for i in range(n):
            name = f"{split}{i:03d}"
            channels = rng.integers(0, len(WORDS), size=5)
            segments = []
            for channel in channels:
                segment = rng.normal(0.0, 0.3, size=(int(rng.integers(3, 7)), len(WORDS)))
                segment[:, channel] += 2.0
                segments.append(segment)
            np.save(root / "feats" / f"{name}.npy", np.concatenate(segments).astype(np.float32))
            rows.append(f"{name}\tfeats/{name}.npy\t{' '.join(WORDS[c] for c in channels)}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_template_modality_from_own_files_to_attention_maps(wheel_install, tmp_path):
    python, _, env = wheel_install
    bin_dir = python.parent
    work = tmp_path / "empty"
    work.mkdir()
    write_npy_dataset(work / "data", {"train": 120, "valid": 12, "test": 6})

    # mmx-data recognises the folder through the plugin's DataFormat.guess and reads the .npy headers through
    # its summarize_files, as it does for the built-in formats
    report = run([bin_dir / "mmx-data", "data"], work, env)
    assert ("mmx-train recipe=npy_features_base data.root=data data.train=train data.valid=valid data.test=test "
            "encoder.feature_dim=4") in report, report
    assert ".npy features (headers of all 120 files): frames min" in report, report
    assert "features per frame: 4 ×120" in report, report

    run([bin_dir / "mmx-train", *NPY_RUN], work, env)  # the recipe ships in the plugin's config package
    assert (work / "run" / "model.pt").is_file() and (work / "run" / "test.hyp").is_file()
    config = OmegaConf.load(work / "run" / ".hydra" / "config.yaml")
    assert config.encoder.name == "npy_features" and config.data.format == "npy_manifest"
    assert len((work / "run" / "test.hyp").read_text().splitlines()) == 6

    # inputs: a manifest of the model's data format (with and without the text column), a file, a folder
    (work / "data" / "unlabelled.tsv").write_text("id\tfeatures\nnew1\tfeats/test001.npy\n", encoding="utf-8")
    (work / "inputs").mkdir()
    for name in ("test002", "test003"):
        shutil.copy(work / "data" / "feats" / f"{name}.npy", work / "inputs" / f"{name}.npy")
    out = run([bin_dir / "mmx-generate", "run", "data/test.tsv", "data/unlabelled.tsv", "data/feats/test000.npy",
               "inputs", "--max-len", "12", "--beam-size", "2"], work, env)
    names = [line.split("\t")[0] for line in out.splitlines()]
    assert names == [f"test{i:03d}" for i in range(6)] + ["new1", "data/feats/test000.npy", "inputs/test002.npy",
                                                          "inputs/test003.npy"], out
    assert all(line.count("\t") == 1 for line in out.splitlines()), out

    scores = json.loads(run([bin_dir / "mmx-eval", "run", "--json", "--beam-size", "2"], work, env))
    assert set(scores) == {"wer", "bleu"}, scores  # the recipe's eval.metrics, on the run's test split

    listing = run([bin_dir / "mmx-attend", "run", "data/feats/test000.npy", "-o", "att", "--max-len", "12"], work, env)
    assert listing.startswith("data/feats/test000.npy\t"), listing
    assert (work / "att" / "test000.png").stat().st_size > 1000
    meta = json.loads((work / "att" / "test000.json").read_text())
    assert meta["sources"]["src"]["kind"] == "features"  # the plugin's FeatureView drew it
    assert meta["context_positions"][:2] == ["t0", "t1"]
