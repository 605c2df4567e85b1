"""The plugin API is stable: what docs/writing-a-plugin.md teaches a plugin author to import stays
importable, from `mmxattn.plugin` and from the modules earlier versions of the guide named."""

from __future__ import annotations

import importlib

import pytest

import mmxattn.plugin

# (module, name) pairs that plugins written against earlier guides import
EARLIER_GUIDE = [
    ("mmxattn.context", "Context"), ("mmxattn.context", "ContextView"), ("mmxattn.registry", "EncoderPlugin"),
    ("mmxattn.registry", "Processor"), ("mmxattn.layers", "TransformerEncoder"),
    ("mmxattn.layers", "sinusoidal_positions"), ("mmxattn.errors", "ConfigError"), ("mmxattn.errors", "DataError"),
    ("mmxattn.fast_linear", "Linear"),
]


@pytest.mark.parametrize(("module", "name"), EARLIER_GUIDE, ids=[f"{m}.{n}" for m, n in EARLIER_GUIDE])
def test_names_from_earlier_guides_still_import(module, name):
    value = getattr(importlib.import_module(module), name)
    if name in mmxattn.plugin.__all__:
        assert getattr(mmxattn.plugin, name) is value  # one object, whichever way it is imported


def test_the_public_module_lists_what_it_exports():
    for name in mmxattn.plugin.__all__:
        assert hasattr(mmxattn.plugin, name), name
