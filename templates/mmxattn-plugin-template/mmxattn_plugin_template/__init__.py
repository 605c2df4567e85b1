"""An example mmxattn encoder plugin (`encoder=byte_cnn`).

Keep this file light: Hydra imports the package to read its configs (mmxattn_plugin_template.conf) on
every `mmx-train`, even when another encoder is selected. The model code lives in `encoder.py`, which
mmxattn imports only when `byte_cnn` is used.
"""

__version__ = "0.1.0"
