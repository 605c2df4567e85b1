"""What a new user must be able to trust: every module imports with the declared dependencies, nothing
the user made is written over, a bare `mmx-train` runs the quickstart and a chosen setup inherits nothing
from it, config mistakes are one line before any data is read, and each run gets a folder of its own."""

from __future__ import annotations

import hashlib
import importlib
import os
import pkgutil
import subprocess
from pathlib import Path

import pytest

import mmxattn
import mmxattn_encoders
from mmxattn.cli import train as train_cli
from mmxattn.errors import ConfigError
from mmxattn.train import train

from .conftest import TINY, compose_config
from .test_registry import GOOD_PLUGIN, site  # noqa: F401 - the fixture

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
QUICKSTARTS = ["translation/quickstart", "speech_translation/quickstart", "captioning/quickstart",
               "multimodal/quickstart"]


def mmx_train(*args, cwd, env=None):
    return subprocess.run(["mmx-train", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env or ENV)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256), to prove a command left it byte-identical."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def users_corpus(tmp_path):
    """A user's own parallel corpus, in the default data format (train/val .en/.de)."""
    folder = tmp_path / "my-corpus"
    folder.mkdir()
    lines = [f"sentence {i} of mine" for i in range(40)]
    for split, count in (("train", 40), ("val", 6)):
        for lang in ("en", "de"):
            (folder / f"{split}.{lang}").write_text("".join(f"{lang} {l}\n" for l in lines[:count]), encoding="utf-8")
    return folder


# --- declared dependencies -------------------------------------------------------------------------------


@pytest.mark.parametrize("package", [mmxattn, mmxattn_encoders], ids=lambda p: p.__name__)
def test_every_module_of_the_installed_package_imports(package):
    """Run in a fresh environment (as .ci/run does), an import of a package missing from pyproject.toml fails here."""
    names = [info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")]
    assert names
    for name in names:
        importlib.import_module(name)


def test_every_subpackage_is_in_the_wheel():
    """pyproject.toml lists the packages a wheel holds; a new folder left out installs nowhere but here."""
    repo = Path(__file__).resolve().parents[1]
    listing = (repo / "pyproject.toml").read_text(encoding="utf-8").split("packages = [", 1)[1].split("]", 1)[0]
    folders = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "mmxattn").rglob("__init__.py")}
    assert {name for name in folders if f'"{name}"' not in listing} == set()


# --- the default recipe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "quickstart"), [
    ([], True),
    (["trainer.max_epochs=2", "--cfg", "job"], True),
    (["-m", "optim.lr=1e-3,2e-3"], True),
    (["data.root=/my/corpus"], False),
    (["+data.extra=1"], False),
    (["encoder=byte_cnn"], False),
    (["encoders.image=null"], False),
    (["recipe=none"], False),
    (["--config-dir", "data", "trainer.max_epochs=1"], True),  # a value of a Hydra option is not an override
])
def test_only_a_command_line_without_recipe_data_or_encoder_gets_the_quickstart(argv, quickstart):
    result = train_cli.with_default_recipe(argv)
    assert (result[-1:] == ["recipe=translation/quickstart"]) == quickstart


def test_recipe_none_and_null_compose_from_the_groups_alone(tmp_path):
    for spelling in ("none", "null"):
        argv = train_cli.check_recipe_argument([f"recipe={spelling}"])
        cfg = compose_config([*argv, "data.root=/x"])
        assert (cfg.name, cfg.data.synthetic, cfg.data.tgt_lang, cfg.encoder.d_model) == ("run", None, "de", 512)


def test_choosing_own_data_trains_on_it_and_leaves_the_folder_untouched(users_corpus, tmp_path):
    before = snapshot(users_corpus)
    result = mmx_train(f"data.root={users_corpus}", *TINY, "trainer.max_steps=2", "eval.metrics=[]",
                       f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recipe=translation/quickstart" not in result.stderr  # nothing of the quickstart was applied
    assert snapshot(users_corpus) == before
    assert (tmp_path / "run" / "model.pt").is_file()


@pytest.mark.parametrize("recipe", QUICKSTARTS)
def test_a_quickstart_never_writes_into_a_users_folder(recipe, users_corpus, tmp_path):
    before = snapshot(users_corpus)
    with pytest.raises(ConfigError) as error:
        train(compose_config([f"recipe={recipe}", f"data.root={users_corpus}"], output_dir=tmp_path / "run"))
    message = str(error.value)
    assert str(users_corpus) in message and "data.synthetic=" in message and "train.en" in message
    assert snapshot(users_corpus) == before


def test_the_cli_names_folder_key_and_recipe_in_one_line(users_corpus, tmp_path):
    before = snapshot(users_corpus)
    result = mmx_train("recipe=speech_translation/quickstart", f"data.root={users_corpus}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and str(users_corpus) in line
    assert "data.synthetic=speech" in line and "recipe=speech_translation/quickstart" in line
    assert snapshot(users_corpus) == before


def test_a_generator_reuses_and_rewrites_only_its_own_folder(tmp_path):
    from mmxattn.quickstart import stamp
    from mmxattn.quickstart.translation import write_corpus

    folder = write_corpus(tmp_path / "gen", train=20, valid=4, test=4, seed=3)
    first = snapshot(folder)
    write_corpus(folder, train=20, valid=4, test=4, seed=3)  # the same corpus: kept as it is
    assert snapshot(folder) == first
    write_corpus(folder, train=30, valid=4, test=4, seed=3)  # another size: its own folder, rewritten
    assert len((folder / "train.en").read_text().splitlines()) == 30
    (folder / "CORPUS").write_text("synthetic-translation being-written: ...\n")  # killed midway
    write_corpus(folder, train=20, valid=4, test=4, seed=3)
    assert snapshot(folder) == first
    with pytest.raises(stamp.ForeignFolderError, match="notes.txt"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("mine")
        write_corpus(tmp_path / "mine", train=20, valid=4, test=4)


def test_a_plugin_keeps_its_own_config_values_under_a_quickstart(site):  # noqa: F811
    from mmxattn import hydra_search

    site.dist("fake-sized", encoders={"fake_sized": "fakesized.plugin:plugin"}, configs={"fake_sized": "fakesized.conf"})
    site.module("fakesized.plugin", GOOD_PLUGIN)
    site.module("fakesized.conf.__init__")
    site.file("fakesized/conf/encoder/fake_sized.yaml", "name: fake_sized\nd_model: 48\nnum_layers: 5\n")
    hydra_search.register()
    for recipe in QUICKSTARTS[:3]:
        cfg = compose_config([f"recipe={recipe}", "encoder=fake_sized"])
        assert dict(cfg.encoder) == {"name": "fake_sized", "d_model": 48, "num_layers": 5}, recipe


# --- mistakes are one line, before anything is read ----------------------------------------------------


@pytest.mark.parametrize(("override", "key"), [
    ("optim.lr=-1", "optim.lr"), ("trainer.max_epochs=abc", "trainer.max_epochs"),
    ("generation.beam_size=0", "generation.beam_size"), ("trainer.max_time=5min", "trainer.max_time"),
    ("data.max_tokens=0", "data.max_tokens"),
])
def test_invalid_values_are_named_before_any_data_is_read(override, key, tmp_path):
    result = mmx_train("recipe=translation/quickstart", f"data.root={tmp_path / 'not-yet'}", override, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {key}=")
    assert not (tmp_path / "not-yet").exists()  # the quickstart's data was not generated first


def test_a_required_value_left_unset_is_named(tmp_path):
    result = mmx_train("recipe=translation/multi30k", cwd=tmp_path)
    assert result.returncode == 2 and "data.root is required" in result.stderr and "Traceback" not in result.stderr


def test_a_config_name_that_is_no_encoder_names_its_file(site, tmp_path):  # noqa: F811
    from mmxattn import hydra_search, registry
    from mmxattn.errors import PluginError

    site.dist("fake-named", encoders={"fake_named": "fakenamed.plugin:plugin"}, configs={"fake_named": "fakenamed.conf"})
    site.module("fakenamed.plugin", GOOD_PLUGIN)
    site.module("fakenamed.conf.__init__")
    site.file("fakenamed/conf/encoder/fake_named.yaml", "name: fakenamed\n")  # not the entry point's name
    hydra_search.register()
    with pytest.raises(PluginError, match=r"pkg://fakenamed.conf/encoder/fake_named.yaml.*entry-point name"):
        registry.get_plugin("fakenamed")


def test_a_plugin_that_rejects_its_config_is_named_with_its_values(site):  # noqa: F811
    from mmxattn import registry
    from mmxattn.errors import PluginError

    site.dist("fake-picky", encoders={"fake_picky": "fakepicky.plugin:plugin"})
    site.module("fakepicky.plugin", GOOD_PLUGIN.replace(
        "    def build_encoder(self, cfg, *, tokenizer=None):\n        return Enc()",
        "    def build_encoder(self, cfg, *, tokenizer=None):\n        return nn.Linear(cfg['width'], 2)"))
    with pytest.raises(PluginError, match=r"'fake_picky' could not build its encoder.*width='wide'.*TypeError"):
        registry.build_encoder("fake_picky", {"name": "fake_picky", "width": "wide"})


def test_strict_mode_stops_a_broken_plugin_config_with_one_line(site, tmp_path):  # noqa: F811
    site.dist("fake-badconf", configs={"fake_badconf": "fakebadconf2.conf"})
    site.module("fakebadconf2.conf.__init__", "raise ImportError('broken conf package')\n")
    env = {**ENV, "MMX_STRICT_PLUGINS": "1", "PYTHONPATH": f"{site.root}{os.pathsep}{ENV.get('PYTHONPATH', '')}"}
    result = mmx_train("--cfg", "job", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fakebadconf2.conf" in result.stderr and "broken conf package" in result.stderr


# --- run folders ---------------------------------------------------------------------------------------------


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(train_cli, "_claimed_dirs", {})
    first = train_cli.claim_run_dir(str(tmp_path / "outputs" / "2026-01-01_10-00-00"))
    assert train_cli.claim_run_dir(str(tmp_path / "outputs" / "2026-01-01_10-00-00")) == first  # asked again
    monkeypatch.setattr(train_cli, "_claimed_dirs", {})  # another process
    second = train_cli.claim_run_dir(str(tmp_path / "outputs" / "2026-01-01_10-00-00"))
    assert first != second and Path(first).is_dir() and Path(second).is_dir()
    assert second.endswith("_2")


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.pt").write_bytes(b"somebody's model")
    with pytest.raises(ConfigError, match="already holds a run.*ckpt_path=last"):
        train(compose_config([*TINY, f"data.root={tiny_corpus}", "data.synthetic=null"], output_dir=run))
    assert (run / "model.pt").read_bytes() == b"somebody's model"


def test_a_run_stopped_by_sigterm_exits_143_without_an_export(tiny_corpus, tmp_path):
    """A scheduler must never read an unfinished run as a finished one."""
    from .run_helpers import cli_env

    run = tmp_path / "run"
    result = subprocess.run(
        ["mmx-train", "recipe=translation/quickstart", *TINY, f"data.root={tiny_corpus}", "data.synthetic=null",
         "eval.metrics=[]", f"hydra.run.dir={run}", "+callbacks.stop._target_=tests.fault_injection.SignalAtStep",
         "+callbacks.stop.step=3"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "stopped by SIGTERM at step" in result.stderr and "ckpt_path=last" in result.stderr
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "model.pt").exists()
