"""A third-party plugin, installed for real: the template package next to an mmxattn wheel, in a fresh venv.

For each of a regular (wheel) and an editable install of templates/mmxattn-plugin-template:
  build mmxattn into a wheel from a copy of this checkout (so the installed package, not the checkout,
  is under test), create a virtualenv, install both with `pip --no-deps`, then from an empty folder
  train a few steps with `mmx-train encoder=byte_cnn`, decode with `mmx-generate`, and list it with
  `mmx-encoders`.
The editable case is the one Hydra's `hydra_plugins` discovery fails on (PEP 660 import-hook finders,
hydra #2359); the test checks that the finder is really what got installed.

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


@pytest.mark.parametrize("mode", ["wheel", "editable"])
def test_template_plugin_trains_from_an_empty_folder(built, mode, tmp_path):
    env = clean_env()
    python, purelib = make_venv(tmp_path / "venv", env)
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation", "-q"]
    run(pip + [built["mmxattn"]], tmp_path, env)
    plugin = ["-e", built["template"]] if mode == "editable" else [built["mmxattn_plugin_template"]]
    run(pip + plugin, tmp_path, env)
    bin_dir = python.parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"

    work = tmp_path / "empty"
    work.mkdir()
    where = json.loads(run([python, "-c", "import json, mmxattn, mmxattn_plugin_template as p; "
                                          "from mmxattn.data.synthetic_translation import write_corpus; "
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
