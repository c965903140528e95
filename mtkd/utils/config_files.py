"""Config files: YAML mappings with ``base:`` inheritance and dotted ``key=value`` overrides (``mtkd.config``
validates what these return)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mtkd.errors import ConfigError
from mtkd.utils import yaml_load


def read_yaml_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in YAML file ``path``, merged over the file its ``base:`` key names (relative to ``path``,
    recursively; a loop is an error). ``ConfigError`` naming the file for a missing file, bad YAML or a
    top level that is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' inheritance loops back to this file")
    try:
        raw = yaml_load.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a YAML file path, got {base!r}")
    return deep_merge(read_yaml_with_base(path.parent / base, (*seen, path.resolve())), raw)


def deep_merge(a: dict, b: Mapping) -> dict:
    """``a`` updated by ``b``, nested mappings merged key by key (``b`` wins); neither is modified."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` → ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml_load.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = value
    return out
