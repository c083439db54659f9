"""Configs: ml_collections files with `get_config(arg)`, dotted command-line overrides, strict checks.

Every entry point takes ``--config=configs/<file>.py[:<arg>]`` and any number of
``--config.<dotted.key>=<value>`` overrides (as big_vision and Octo do). Overrides are checked
before any work: an unknown key fails with the key's name and the closest existing keys, a value
that does not convert to the field's type fails with the key, the value and the expected type.
The resolved config is written as JSON into the run's work directory.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from c2a_jax.fileio import atomic_write_text


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names it."""


def config_value(section: Any, key: str, default: Any) -> Any:
    """``section.<key>`` of a ConfigDict, dict or plain object; `default` when the section is None,
    the key is absent or its value is None (the one lookup every module that reads a config uses)."""
    if section is None:
        return default
    value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
    return default if value is None else value


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Load ``path.py[:arg]`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_name = "c2a_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"config file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path!r} does not parse: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{spec}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}:get_config() must return an ml_collections.ConfigDict")
    return config


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(_all_keys(value, prefix + key + "."))
    return keys


def _field_type(parent: ml_collections.ConfigDict, key: str) -> type | None:
    """The declared type of a field (placeholders keep theirs even while unset)."""
    return parent.get_ref(key)._field_type


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(key: str, raw: str, typ: type | None) -> Any:
    """Convert a command-line string to the type of the field it overrides."""
    try:
        if typ is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError("not a boolean")
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
        if typ in (tuple, list):
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):  # a bare comma list: a,b,c
                value = tuple(item.strip() for item in raw.split(",") if item.strip())
            if not isinstance(value, (tuple, list)):
                value = (value,)
            return typ(value)
        if typ is None:  # a None default without declared type: take a Python literal or a string
            try:
                return ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                return raw
    except (ValueError, SyntaxError) as e:
        name = getattr(typ, "__name__", str(typ))
        raise ConfigError(f"--config.{key}={raw!r}: expected a value of type {name} ({e})") from None
    raise ConfigError(f"--config.{key} is a {getattr(typ, '__name__', typ)} and cannot be set from the command line")


def apply_override(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Set ``config.<key>`` from the command-line string `raw`, or raise `ConfigError`."""
    parts = key.split(".")
    parent = config
    for i, part in enumerate(parts):
        if not isinstance(parent, ml_collections.ConfigDict) or part not in parent:
            close = difflib.get_close_matches(key, _all_keys(config), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if i < len(parts) - 1:
            parent = parent[part]
    leaf = parts[-1]
    if isinstance(parent.get_ref(leaf)._value, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key} is a group of settings; set one of its keys instead")
    value = _convert(key, raw, _field_type(parent, leaf))
    try:
        setattr(parent, leaf, value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--config.{key}={raw!r}: {e}") from None


def describe(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """One line per key: ``dotted.key = value  (type)``; unset required values show as <required>."""
    lines = []
    for key in config.keys():
        ref = config.get_ref(key)
        if isinstance(ref._value, ml_collections.ConfigDict):
            lines.extend(describe(ref._value, prefix + key + "."))
            continue
        typ = getattr(ref._field_type, "__name__", "any")
        shown = "<required>" if ref._value is None and getattr(ref, "_required", False) else repr(ref._value)
        lines.append(f"  {prefix}{key} = {shown}  ({typ})")
    return lines


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True) + "\n"


def write_resolved_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Write the resolved config to ``<workdir>/config.json`` atomically; return its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    atomic_write_text(path, to_json(config))
    return path


def check_required(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Fail on placeholders (required values) that were left unset, naming the first one."""
    for key in config.keys():
        ref = config.get_ref(key)
        if ref._value is None and getattr(ref, "_required", False):
            raise ConfigError(f"--config.{prefix}{key} is required")
        if isinstance(ref._value, ml_collections.ConfigDict):
            check_required(ref._value, prefix + key + ".")


def parse_command_line(
    argv: Sequence[str] | None, description: str, default_config: str | None = None
) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
    """Parse ``--config=<file>[:arg]`` plus ``--config.<key>=<value>`` overrides.

    ``--help`` prints the entry point's description and, when a config is given, that config's
    docstring and its keys with their current values. Errors exit with status 2 and one line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        epilog="Override any config value with --config.<dotted.key>=<value>.",
    )
    parser.add_argument(
        "--config",
        default=default_config,
        required=default_config is None,
        help="config file and optional argument, e.g. configs/vlm/tiny.py:arg",
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and the config's keys")
    overrides: list[tuple[str, str]] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, raw = arg[len("--config.") :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    parser.error(f"--config.{key} needs a value")
                raw = argv[i + 1]
                i += 1
            overrides.append((key, raw))
        else:
            rest.append(arg)
        i += 1
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        spec = next((a.split("=", 1)[1] for a in rest if a.startswith("--config=")), default_config)
        if spec:
            try:
                config = load_config_file(spec)
            except ConfigError as e:
                print(f"\n(config {spec!r} could not be loaded: {e})")
            else:
                print(f"\nConfig {spec} (override with --config.<key>=<value>):")
                print("\n".join(describe(config)))
        raise SystemExit(0)
    args = parser.parse_args(rest)
    try:
        config = load_config_file(args.config)
        for key, raw in overrides:
            apply_override(config, key, raw)
        check_required(config)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return config, args


def placeholder(typ: type) -> Any:
    """A required config value of type `typ` that the command line must set."""
    return config_dict.placeholder(typ, required=True)


def run_entry_point(argv: Sequence[str] | None, doc: str, default_config: str, what: str, step: str) -> int:
    """Shared body of the entry points whose work has not landed yet: check the config, write it,
    and say plainly what is missing (exit status 3, so no script mistakes it for success)."""
    config, _ = parse_command_line(argv, doc, default_config)
    path = write_resolved_config(config, config.workdir)
    print(f"resolved config written to {path}")
    print(f"{what} arrives with {step}; nothing was run.", file=sys.stderr)
    return 3
