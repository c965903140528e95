"""Validate an Ultralytics model YAML before Ultralytics builds it: nothing in it may run code.

Ultralytics' ``parse_model`` runs ``eval()`` on the YAML's ``activation`` string and resolves each layer's module
name through ``globals()`` / ``getattr(torch.nn, ...)`` of its own module. A model YAML read from a checkpoint
(``arch.yaml``) is data from a file, so before Ultralytics sees it every field it evaluates is checked against a
fixed allowlist:

- ``activation``: ``[torch.]nn.<Name>(<number or bool literals>)`` with ``<Name>`` in ``ACTIVATIONS``;
- each layer ``[from, repeats, module, args]``: ``from`` an int or a list of ints, ``repeats`` an int, ``module``
  one of Ultralytics' exported layer classes (``ultralytics.nn.modules.__all__``, minus ``TorchVision`` which loads
  weights by name), ``nn.<Module class>`` or ``torchvision.ops.<Module class>``; ``args`` plain literals
  (numbers, strings, booleans, null, lists) — strings there are only looked up or ``ast.literal_eval``-ed.

Anything else raises ``ConfigError`` naming the field, so a crafted YAML fails before any of it is evaluated.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from mtkd.errors import ConfigError

#: activation classes a model YAML may name (``nn.<Name>(...)``)
ACTIVATIONS = frozenset({
    "SiLU", "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Hardsigmoid", "GELU", "Mish", "ELU", "SELU", "CELU",
    "PReLU", "Sigmoid", "Tanh", "Identity",
})  # fmt: skip
#: Ultralytics layers refused although exported: they load weights or code by name at construction
_REFUSED_LAYERS = frozenset({"TorchVision"})


def _activation_ok(act: Any) -> bool:
    if not isinstance(act, str):
        return False
    try:
        call = ast.parse(act.strip(), mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(call, ast.Call):
        return False
    parts, node = [], call.func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return False
    parts.append(node.id)
    if parts[1:] not in (["nn"], ["nn", "torch"]) or parts[0] not in ACTIVATIONS:
        return False
    values = [*call.args, *(k.value for k in call.keywords)]
    return all(
        isinstance(v, ast.Constant) and isinstance(v.value, (int, float, bool)) for v in values
    ) and all(k.arg is not None for k in call.keywords)


def _allowed_layer(name: str) -> bool:
    import torch.nn
    import torchvision.ops
    import ultralytics.nn.modules as um

    if name.startswith("nn."):
        obj = getattr(torch.nn, name[3:], None)
    elif name.startswith("torchvision.ops."):
        obj = getattr(torchvision.ops, name[16:], None)
    elif name in um.__all__ and name not in _REFUSED_LAYERS:
        obj = getattr(um, name, None)
    else:
        return False
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def _literal(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    if isinstance(x, (list, tuple)):
        return all(_literal(v) for v in x)
    return False


def _int_list(x: Any) -> bool:
    ok = isinstance(x, int) and not isinstance(x, bool)
    return ok or (
        isinstance(x, list) and bool(x) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)
    )


def validate_model_yaml(cfg: Any, where: str) -> None:
    """Raise ``ConfigError`` (naming ``where`` and the field) unless ``cfg`` is a model YAML dict whose evaluated
    fields are all in the allowlist (module docstring)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: the model YAML must be a mapping, got {type(cfg).__name__}")
    act = cfg.get("activation")
    if act is not None and not _activation_ok(act):
        raise ConfigError(
            f"{where}: field 'activation' = {str(act)[:80]!r}; expected nn.<Name>(<number literals>) with <Name> one "
            f"of {', '.join(sorted(ACTIVATIONS))}"
        )
    for section in ("backbone", "head"):
        layers = cfg.get(section)
        if not isinstance(layers, list):
            raise ConfigError(
                f"{where}: field {section!r} must be a list of [from, repeats, module, args] layers"
            )
        for i, layer in enumerate(layers):
            field = f"{section}[{i}]"
            if not (isinstance(layer, (list, tuple)) and len(layer) == 4):
                raise ConfigError(
                    f"{where}: field {field!r} = {str(layer)[:80]}; expected [from, repeats, module, args]"
                )
            frm, n, module, args = layer
            if not _int_list(frm) or not (isinstance(n, int) and not isinstance(n, bool)):
                raise ConfigError(
                    f"{where}: field {field!r}: 'from' must be an int or a list of ints and 'repeats' "
                    f"an int, got {frm!r}, {n!r}"
                )
            if not isinstance(module, str) or not _allowed_layer(module):
                raise ConfigError(
                    f"{where}: field {field!r}: module {str(module)[:80]!r} is not an allowed layer (Ultralytics' "
                    f"exported layer classes, nn.<Module> or torchvision.ops.<Module>)"
                )
            if not isinstance(args, list) or not _literal(args):
                raise ConfigError(
                    f"{where}: field {field!r}: args must be a list of plain literals, got {str(args)[:80]}"
                )
