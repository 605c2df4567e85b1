"""`mmx-encoders`: list the installed encoder plugins and data formats, where their configs are, and which
failed to load."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .. import hydra_search, registry
from ..errors import PluginError
from .common import user_errors_exit

EPILOG = """examples:
  mmx-encoders                     # every encoder: name, package, version, config, input kind
  mmx-encoders --show text         # print the config that encoder=text selects (override its keys)
  mmx-encoders --no-load           # from package metadata only, importing no plugin
  MMX_STRICT_PLUGINS=1 mmx-encoders   # plugin authors: exit with an error if any plugin is broken

An encoder is selected with `mmx-train encoder=<name>`, or per source with `encoders.<source>`; a data
format with `data.format=<name>`. Encoders come from the entry-point group `mmxattn.encoders`, data
formats from `mmxattn.data_formats`, their configs from `mmxattn.configs` (see docs/writing-a-plugin.md)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mmx-encoders", description="List the encoder plugins mmxattn can use.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--show", metavar="NAME", help="print the config file of this encoder and exit")
    parser.add_argument("--no-load", action="store_true", help="do not import plugins (no input kind, no load errors)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def collect(load: bool = True) -> dict:
    """{"encoders": [...], "failed": [...], "config_packages": [...], "broken_config_packages": [...]}."""
    infos = registry.available()
    conflicts = registry.conflicts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported in the listing itself
        config_pkgs, broken_configs = hydra_search.config_packages()
        plugins, failures = registry.load_all() if load else ({}, {})
        formats, format_failures = registry.DATA_FORMATS.load_all() if load else ({}, {})
    for name, claims in conflicts.items():
        failures.setdefault(name, str(registry.ENCODERS.conflict_error(name, claims)))
    for name, claims in registry.DATA_FORMATS.scan()[1].items():
        format_failures.setdefault(name, str(registry.DATA_FORMATS.conflict_error(name, claims)))
    encoders = []
    for name in sorted(infos):
        if name in failures:
            continue
        info, plugin = infos[name], plugins.get(name)
        kind = None
        if plugin is not None:
            kind = plugin.input_kind + (f" ({' '.join(plugin.file_extensions)})" if plugin.file_extensions else "")
        encoders.append({
            "name": name, "package": info.package, "version": info.version, "entry_point": info.value,
            "config": hydra_search.find_encoder_config(name, config_pkgs), "input": kind,
        })
    failed = [
        {"name": name, "package": infos[name].package if name in infos else "?",
         "version": infos[name].version if name in infos else "", "error": error}
        for name, error in sorted(failures.items())
    ]
    format_infos = registry.DATA_FORMATS.available()
    data_formats = [
        {"name": name, "package": info.package, "version": info.version, "entry_point": info.value,
         "manifest": getattr(formats.get(name), "manifest", None)}
        for name, info in sorted(format_infos.items()) if name not in format_failures
    ]
    failed += [
        {"name": f"data.format={name}", "package": format_infos[name].package if name in format_infos else "?",
         "version": format_infos[name].version if name in format_infos else "", "error": error}
        for name, error in sorted(format_failures.items())
    ]
    return {
        "encoders": encoders,
        "data_formats": data_formats,
        "failed": failed,
        "config_packages": [{"module": c.module, "package": c.package, "version": c.version} for c in config_pkgs],
        "broken_config_packages": [
            {"module": c.module, "package": c.package, "version": c.version, "error": e} for c, e in broken_configs.items()
        ],
    }


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def render(listing: dict) -> str:
    lines = []
    if listing["encoders"]:
        rows = [["NAME", "PACKAGE", "VERSION", "INPUT", "CONFIG (encoder=<NAME>)"]]
        for e in listing["encoders"]:
            rows.append([e["name"], e["package"], e["version"], e["input"] or "-",
                         e["config"] or "none: the package ships no encoder/<name>.yaml"])
        lines.append(_table(rows))
    else:
        lines.append("No encoders are installed.")
    if listing["data_formats"]:
        rows = [["DATA FORMAT", "PACKAGE", "VERSION", "MANIFEST (mmx-generate reads it)"]]
        for f in listing["data_formats"]:
            rows.append([f["name"], f["package"], f["version"], f["manifest"] or "-"])
        lines.append("\n" + _table(rows))
    if listing["failed"]:
        lines.append(f"\nFailed to load ({len(listing['failed'])}):")
        for f in listing["failed"]:
            lines.append(f"  {f['name']} (package '{f['package']}' {f['version']}): {f['error']}")
    if listing["broken_config_packages"]:
        lines.append(f"\nUnreadable config packages ({len(listing['broken_config_packages'])}):")
        for c in listing["broken_config_packages"]:
            lines.append(f"  {c['module']} (package '{c['package']}' {c['version']}): {c['error']}")
    return "\n".join(lines)


@user_errors_exit
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.show:
        if args.show not in registry.available():
            raise PluginError(f"unknown encoder '{args.show}'; `mmx-encoders` lists the installed ones")
        text = hydra_search.read_encoder_config(args.show)
        if text is None:
            raise PluginError(f"encoder '{args.show}' is installed but ships no config (encoder/{args.show}.yaml)")
        print(f"# {hydra_search.find_encoder_config(args.show)}")
        print(text, end="" if text.endswith("\n") else "\n")
        return
    listing = collect(load=not args.no_load)
    print(json.dumps(listing, indent=2) if args.json else render(listing))
    if listing["failed"] or listing["broken_config_packages"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
