"""The plugin registry and plugin configs, driven by fake installed distributions.

Each test writes a `<name>-<version>.dist-info` folder (METADATA + entry_points.txt) and the plugin's
modules into a temporary folder and puts it on sys.path: to importlib.metadata that is an installed
package, exactly like one pip installed, without any pip install.
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from mmxattn import hydra_search, registry
from mmxattn.cli import encoders as encoders_cli
from mmxattn.errors import PluginError

GOOD_PLUGIN = '''
from mmxattn.context import Context
from mmxattn.registry import EncoderPlugin, Processor
import torch
from torch import nn

class Enc(nn.Module):
    output_dim = 8
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(1, 8)
    def forward(self, batch):
        return Context(self.proj(batch["x"]), batch["mask"])

class Proc(Processor):
    def __call__(self, raw):
        return [float(len(w)) for w in raw.split()]
    def collate(self, items):
        width = max(len(i) for i in items)
        x = torch.zeros(len(items), width, 1)
        for row, values in enumerate(items):
            x[row, : len(values), 0] = torch.tensor(values)
        return {"x": x, "mask": torch.arange(width)[None] < torch.tensor([len(i) for i in items])[:, None]}

class Plugin(EncoderPlugin):
    input_kind = "text"
    def build_encoder(self, cfg, *, tokenizer=None):
        return Enc()
    def build_processor(self, cfg, *, tokenizer=None, train=False):
        return Proc()

plugin = Plugin()
'''


class FakeSite:
    """A folder on sys.path holding fake installed distributions and their modules."""

    def __init__(self, root: Path, monkeypatch):
        self.root, self.monkeypatch = root, monkeypatch
        root.mkdir(parents=True, exist_ok=True)
        monkeypatch.syspath_prepend(str(root))

    def dist(self, name: str, version: str = "1.0", encoders: dict | None = None, configs: dict | None = None) -> None:
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        groups = {"mmxattn.encoders": encoders or {}, "mmxattn.configs": configs or {}}
        (info / "entry_points.txt").write_text(
            "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items() if eps)
        )

    def module(self, dotted: str, source: str = "") -> None:
        parts = dotted.split(".")
        for i in range(1, len(parts)):
            package = self.root.joinpath(*parts[:i])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
        (self.root.joinpath(*parts[:-1]) / f"{parts[-1]}.py").write_text(textwrap.dedent(source))

    def file(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.STRICT_ENV, raising=False)
    monkeypatch.setattr(registry.ENCODERS, "loaded", {})
    monkeypatch.setattr(registry.DATA_FORMATS, "loaded", {})
    before = set(sys.modules)
    yield FakeSite(tmp_path / "site", monkeypatch)
    for name in set(sys.modules) - before:
        if name.startswith("fake"):
            del sys.modules[name]


def test_entry_points_are_listed_without_importing_and_loaded_once(site):
    site.dist("fake-words", "2.3", encoders={"fake_words": "fakewords.plugin:plugin"})
    site.module("fakewords.plugin", GOOD_PLUGIN)

    info = registry.available()["fake_words"]
    assert (info.package, info.version, info.value) == ("fake-words", "2.3", "fakewords.plugin:plugin")
    assert "fakewords.plugin" not in sys.modules  # listing imports nothing
    assert "text" in registry.available()  # the built-ins register the same way

    plugin = registry.get_plugin("fake_words")
    assert "fakewords.plugin" in sys.modules
    assert registry.get_plugin("fake_words") is plugin
    encoder = registry.build_encoder("fake_words", {})
    batch = plugin.build_processor({}).collate([plugin.build_processor({})("a bb ccc")])
    assert registry.check_context("fake_words", encoder(batch), 1).states.shape == (1, 3, 8)


def test_a_broken_plugin_warns_with_its_name_package_and_error_and_the_others_work(site):
    site.dist("fake-broken-pkg", "0.4", encoders={"fake_broken": "fakebroken.plugin:plugin", "fake_ok": "fakeok.plugin:plugin"})
    site.module("fakebroken.plugin", "import not_a_module_anywhere\n")
    site.module("fakeok.plugin", GOOD_PLUGIN)

    with pytest.warns(RuntimeWarning) as caught:
        plugins, failures = registry.load_all()
    message = " ".join(str(w.message) for w in caught)
    for expected in ("fake_broken", "fake-broken-pkg", "0.4", "ModuleNotFoundError", "not_a_module_anywhere"):
        assert expected in message
    assert "fake_ok" in plugins and "text" in plugins
    assert set(failures) == {"fake_broken"}
    # Selecting the broken one is an error naming it; selecting another one works.
    with pytest.raises(PluginError, match="fake_broken.*fake-broken-pkg.*failed to load"):
        registry.get_plugin("fake_broken")
    assert registry.build_encoder("fake_ok", {}).output_dim == 8


def test_strict_mode_turns_a_broken_plugin_into_an_error(site, monkeypatch):
    site.dist("fake-broken-pkg", encoders={"fake_broken": "fakebroken2.plugin:plugin"})
    site.module("fakebroken2.plugin", "raise RuntimeError('boom at import')\n")
    monkeypatch.setenv(registry.STRICT_ENV, "1")
    with pytest.raises(PluginError, match="fake_broken.*fake-broken-pkg.*RuntimeError: boom at import"):
        registry.load_all()


def test_a_missing_attribute_and_a_class_instead_of_an_instance_are_named(site):
    site.dist("fake-pkg", encoders={"fake_noattr": "fakenoattr.plugin:plugn", "fake_class": "fakeclass.plugin:Plugin"})
    site.module("fakenoattr.plugin", GOOD_PLUGIN)
    site.module("fakeclass.plugin", GOOD_PLUGIN)
    with pytest.raises(PluginError, match="fake_noattr.*AttributeError.*plugn"):
        registry.get_plugin("fake_noattr")
    with pytest.raises(PluginError, match=r"fake_class.*is the class Plugin.*plugin = Plugin\(\)"):
        registry.get_plugin("fake_class")


def test_two_packages_claiming_one_name_is_an_error_naming_both(site, monkeypatch):
    site.dist("fake-first", encoders={"fake_dup": "fakefirst.plugin:plugin", "fake_solo": "fakefirst.plugin:plugin"})
    site.dist("fake-second", encoders={"fake_dup": "fakesecond.plugin:plugin"})
    site.module("fakefirst.plugin", GOOD_PLUGIN)
    site.module("fakesecond.plugin", GOOD_PLUGIN)

    with pytest.raises(PluginError) as error:
        registry.get_plugin("fake_dup")
    for expected in ("fake_dup", "fake-first", "fakefirst.plugin:plugin", "fake-second", "fakesecond.plugin:plugin"):
        assert expected in str(error.value)
    assert registry.get_plugin("fake_solo")  # the conflict does not take other names down
    with pytest.warns(RuntimeWarning, match="fake_dup"):
        _, failures = registry.load_all()
    assert "fake_dup" in failures

    monkeypatch.setenv(registry.STRICT_ENV, "1")
    with pytest.raises(PluginError, match="fake-first.*fake-second"):
        registry.available()


def test_one_package_seen_twice_on_the_path_is_not_a_duplicate(site, tmp_path, monkeypatch):
    # e.g. a wheel in a virtualenv plus an editable copy of the same package further down sys.path
    site.dist("fake-twice", encoders={"fake_twice": "faketwice.plugin:plugin"})
    site.module("faketwice.plugin", GOOD_PLUGIN)
    FakeSite(tmp_path / "other-site", monkeypatch).dist("fake-twice", encoders={"fake_twice": "faketwice.plugin:plugin"})
    assert "fake_twice" not in registry.conflicts()
    assert registry.get_plugin("fake_twice")


def test_runtime_registration(site):
    module = type(sys)("fake_runtime")
    exec(GOOD_PLUGIN, module.__dict__)
    registry.register_plugin("fake_runtime", module.plugin)
    try:
        assert registry.available()["fake_runtime"].package == "<runtime>"
        assert registry.get_plugin("fake_runtime") is module.plugin
        with pytest.raises(PluginError, match="already registered"):
            registry.register_plugin("fake_runtime", module.plugin)
        with pytest.raises(PluginError, match="already registered"):
            registry.register_plugin("text", module.plugin)
    finally:
        registry.unregister_plugin("fake_runtime")
    assert "fake_runtime" not in registry.available()


def test_unknown_encoder_lists_the_available_ones():
    with pytest.raises(PluginError, match="unknown encoder 'nope'.*text.*mmx-encoders"):
        registry.get_plugin("nope")


def compose_train(overrides):
    with initialize_config_module("mmxattn.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def test_a_plugin_config_package_makes_the_encoder_selectable_in_hydra(site):
    site.dist("fake-words", "2.3", encoders={"fake_words": "fakecfg.plugin:plugin"}, configs={"fake_words": "fakecfg.conf"})
    site.module("fakecfg.plugin", GOOD_PLUGIN)
    site.module("fakecfg.conf.__init__")
    site.file("fakecfg/conf/encoder/fake_words.yaml", "name: fake_words\nwidth: 8\n")
    hydra_search.register()

    cfg = compose_train(["encoder=fake_words", "encoder.width=16"])
    assert (cfg.encoder.name, cfg.encoder.width) == ("fake_words", 16)
    assert compose_train([]).encoder.name == "text"  # built-ins unchanged
    assert hydra_search.find_encoder_config("fake_words") == "pkg://fakecfg.conf/encoder/fake_words.yaml"
    assert hydra_search.find_encoder_config("text") == "pkg://mmxattn.conf/encoder/text.yaml"
    assert "fakecfg.plugin" not in sys.modules  # configs are found without importing the plugin


def test_a_broken_config_package_warns_and_leaves_hydra_working(site, monkeypatch):
    site.dist("fake-badconf", configs={"fake_badconf": "fakebadconf.conf"})
    site.module("fakebadconf.conf.__init__", "raise ImportError('broken conf package')\n")
    hydra_search.register()
    with pytest.warns(RuntimeWarning, match="fakebadconf.conf.*fake-badconf.*broken conf package"):
        assert compose_train([]).encoder.name == "text"
    monkeypatch.setenv(registry.STRICT_ENV, "1")
    with pytest.raises(PluginError, match="fakebadconf.conf"):
        hydra_search.config_packages()


def test_mmx_encoders_lists_encoders_their_configs_and_failures(site, capsys):
    site.dist("fake-words", "2.3", encoders={"fake_words": "fakelist.plugin:plugin", "fake_broken": "fakelist.nothere:plugin"},
              configs={"fake_words": "fakelist.conf"})
    site.module("fakelist.plugin", GOOD_PLUGIN)
    site.module("fakelist.conf.__init__")
    site.file("fakelist/conf/encoder/fake_words.yaml", "name: fake_words\n")

    with pytest.raises(SystemExit) as exited:  # a failure makes the exit status 1
        encoders_cli.main([])
    assert exited.value.code == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("fake_words "))
    for expected in ("fake-words", "2.3", "text", "pkg://fakelist.conf/encoder/fake_words.yaml"):
        assert expected in row
    assert any(line.startswith("text ") and "pkg://mmxattn.conf/encoder/text.yaml" in line for line in out.splitlines())
    failed = out.split("Failed to load (1):")[1]
    assert "fake_broken" in failed and "fake-words" in failed and "ModuleNotFoundError" in failed

    encoders_cli.main(["--show", "fake_words"])
    assert "name: fake_words" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(registry.available()))
def test_every_installed_encoder_loads_and_ships_its_config(name):
    """Registry-driven: a new built-in (or installed) plugin is checked for free."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plugin = registry.get_plugin(name)
    assert plugin.input_kind in ("text", "path")
    assert plugin.input_kind == "text" or plugin.file_extensions, "path plugins must declare file_extensions"
    assert hydra_search.find_encoder_config(name) is not None
    assert compose_train([f"encoder={name}"]).encoder.name == name
