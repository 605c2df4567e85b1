"""The public plugin API: everything a plugin package imports from mmxattn, in one place.

    from mmxattn.plugin import Context, EncoderPlugin, Processor, TransformerEncoder, DataError

The names stay importable from their home modules too (`mmxattn.context.Context`, `mmxattn.registry.
EncoderPlugin`, `mmxattn.layers.TransformerEncoder`, ...), which is what plugins written against earlier
versions of docs/writing-a-plugin.md import; tests/test_plugin_api.py holds both. Anything else in
mmxattn is internal and may change between releases.
"""

from .context import Context, ContextView
from .errors import ConfigError, DataError, PluginError
from .layers import TransformerEncoder, sinusoidal_positions
from .registry import EncoderPlugin, Processor

__all__ = [
    "ConfigError", "Context", "ContextView", "DataError", "EncoderPlugin", "PluginError", "Processor",
    "TransformerEncoder", "sinusoidal_positions",
]
