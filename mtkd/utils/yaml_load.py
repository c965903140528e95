"""YAML for configs typed by people: booleans are only ``true``/``false`` (YAML 1.2), never ``on``/``off``/``yes``/``no``.

PyYAML implements YAML 1.1, where ``amp=off`` reads as ``False`` and ``name=no`` as ``False``: a string field
then fails with "expected str, got bool" although the user typed the documented word. ``safe_load`` here is
``yaml.safe_load`` with the YAML 1.2 boolean rule, so those words stay strings; typed bool fields accept them
where a boolean is expected (``mtkd.config``).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Yaml12BoolLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose implicit booleans are ``true``/``false`` only (any case variant YAML allows)."""


_Yaml12BoolLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BoolLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 booleans (module docstring). Raises ``yaml.YAMLError`` like it."""
    return yaml.load(text, Loader=_Yaml12BoolLoader)  # noqa: S506 - a SafeLoader subclass
