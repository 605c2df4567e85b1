"""The public plugin API: everything a plugin package imports from mmxattn, in one place.

    from mmxattn.plugin import Context, EncoderPlugin, Processor, TransformerEncoder, DataError

An encoder plugin needs Context, EncoderPlugin and Processor; one that brings a modality's files also
registers a DataFormat (reading Samples, counting skipped rows in a SkipReport) and may subclass
ContextView to draw its inputs in `mmx-attend`.

The names stay importable from their home modules too (`mmxattn.context.Context`, `mmxattn.registry.
EncoderPlugin`, `mmxattn.layers.TransformerEncoder`, ...), which is what plugins written against earlier
versions of docs/writing-a-plugin.md import; tests/test_plugin_api.py holds both. Anything else in
mmxattn is internal and may change between releases.
"""

from .context import Context, ContextView
from .data.samples import Sample, SkipReport, read_lines
from .errors import ConfigError, DataError, PluginError
from .layers import TransformerEncoder, sinusoidal_positions
from .registry import DataFormat, EncoderPlugin, Processor

__all__ = [
    "ConfigError", "Context", "ContextView", "DataError", "DataFormat", "EncoderPlugin", "PluginError", "Processor",
    "Sample", "SkipReport", "TransformerEncoder", "read_lines", "sinusoidal_positions",
]
