"""The sources a model reads: named inputs (`src`, or e.g. `text` and `image`), each with its own encoder.

A batch is {source name: that encoder's collated features}; one config section per source says which
encoder reads it. Data and model both speak in these names, so they live here, below both.
"""

from __future__ import annotations

from .errors import ConfigError

PRESENT = "present"  # reserved key of a source's batch: [B] bool, which rows have this source
CONTEXT = "context"  # reserved key of a source's batch: [B, S, D] its encoder's output, read from a cache


def encoder_configs(cfg) -> dict:
    """{source name: encoder config}; a single `encoder` reads the source called `src`.

    With `encoders`, a source set to null is left out (e.g. `encoders.image=null` trains without it).
    """
    if cfg.get("encoders"):
        configs = {source: c for source, c in dict(cfg["encoders"]).items() if c is not None}
        if not configs:
            raise ConfigError("every source under `encoders` is null; keep at least one")
        for source, c in configs.items():
            if not hasattr(c, "get") or not c.get("name"):
                raise ConfigError(f"encoders.{source} needs a `name` (an encoder; `mmx-encoders` lists them)")
        return configs
    if not cfg.get("encoder") or not cfg["encoder"].get("name"):
        raise ConfigError("config key `encoder.name` is missing: select an encoder with encoder=<name>")
    return {"src": cfg["encoder"]}
