"""The public plugin API: everything a plugin package imports from mmxattn, in one place.

    from mmxattn.plugin import Context, EncoderPlugin, Processor, TransformerEncoder, DataError

An encoder plugin needs Context, EncoderPlugin and Processor; one that brings a modality's files also
registers a DataFormat (reading Samples, counting skipped rows in a SkipReport; a `Guess` lets `mmx-data
DIR` recognise its folders), may summarise its files for `mmx-data` (`EncoderPlugin.summarize_files`, with
describe_values / describe_counts / read_headers) and may subclass ContextView to draw its inputs in
`mmx-attend` (with clamp / ticks / heatmap / colorbar).

The names stay importable from their home modules too (`mmxattn.context.Context`, `mmxattn.registry.
EncoderPlugin`, `mmxattn.layers.TransformerEncoder`, ...), which is what plugins written against earlier
versions of docs/writing-a-plugin.md import; tests/test_plugin_api.py holds both. Anything else in
mmxattn is internal and may change between releases.
"""

from .context import Context, ContextView
from .data.guess import Guess, splits_of
from .data.samples import Sample, SkipReport, read_lines
from .data.summary import describe_counts, describe_values, read_headers, unreadable_lines
from .errors import ConfigError, DataError, PluginError
from .layers import TransformerEncoder, sinusoidal_positions
from .registry import DataFormat, EncoderPlugin, Processor
from .viz.plotting import clamp, colorbar, heatmap, ticks

__all__ = [
    "ConfigError", "Context", "ContextView", "DataError", "DataFormat", "EncoderPlugin", "Guess", "PluginError",
    "Processor", "Sample", "SkipReport", "TransformerEncoder", "clamp", "colorbar", "describe_counts",
    "describe_values", "heatmap", "read_headers", "read_lines", "sinusoidal_positions", "splits_of", "ticks",
    "unreadable_lines",
]
