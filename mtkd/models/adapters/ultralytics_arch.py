"""Pruned channel widths of an Ultralytics-based model, as plain data next to its YAML (Ultralytics issue #7498).

A model YAML cannot express pruned widths, so the ``ultralytics`` adapter's ``arch()`` stores, next to the YAML:

- ``split_free``: module paths of the blocks replaced by split-free equivalents (``ultralytics_blocks``), so the
  rebuilt model has the same layout (``cv0``/``cv1`` instead of one ``cv1``);
- ``widths``: ``{module path: widths}`` for every layer whose shape differs from the model the YAML (and the
  split-free conversion) builds: ``nn.Conv2d`` → ``[in_channels, out_channels, groups]``, ``nn.BatchNorm2d`` →
  ``[num_features]``, ``nn.Linear`` → ``[in_features, out_features]``. Paths are relative to the adapter, as in
  its ``state_dict`` (``model.model.4.cv0.conv``, ``seg.fuse.conv``).

Rebuilding (``apply_widths``) replaces each listed layer by a fresh one of the same type, hyperparameters and
device with the stored widths; the checkpoint's state_dict then fills it. Nothing is imported or evaluated: paths
are checked against a strict pattern and must name an existing layer of the expected type, widths are validated
plain ints (``ConfigError`` naming the field otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from mtkd.errors import ConfigError

#: largest channel count accepted from a file (a sanity bound, not a model limit)
MAX_WIDTH = 1 << 20
_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9][A-Za-z0-9_]*)*$")
_KINDS: dict[type, tuple[str, int]] = {
    nn.Conv2d: ("[in_channels, out_channels, groups]", 3),
    nn.BatchNorm2d: ("[num_features]", 1),
    nn.Linear: ("[in_features, out_features]", 2),
}


def _widths_of(m: nn.Module) -> list[int]:
    if isinstance(m, nn.Conv2d):
        return [m.in_channels, m.out_channels, m.groups]
    if isinstance(m, nn.BatchNorm2d):
        return [m.num_features]
    return [m.in_features, m.out_features]


def _kind(m: nn.Module) -> type | None:
    return next((t for t in _KINDS if type(m) is t), None)


def read_widths(live: nn.Module, reference: nn.Module) -> dict[str, list[int]]:
    """``{path: widths}`` of the layers of ``live`` whose widths differ from the same layer of ``reference``
    (layers of other types, or missing from ``reference``, are left for the state_dict check to report)."""
    ref = dict(reference.named_modules())
    out: dict[str, list[int]] = {}
    for name, m in live.named_modules():
        kind = _kind(m)
        r = ref.get(name)
        if kind is None or r is None or type(r) is not kind:
            continue
        w = _widths_of(m)
        if w != _widths_of(r):
            out[name] = w
    return out


def check_split_free(value: Any, where: str) -> list[str]:
    """The arch's ``split_free`` field: a list of module paths (``ConfigError`` otherwise)."""
    if not isinstance(value, list) or not all(isinstance(p, str) and _PATH.match(p) for p in value):
        raise ConfigError(
            f"{where}: field 'split_free' must be a list of module paths like 'model.model.2', got "
            f"{str(value)[:80]}"
        )
    return list(value)


def _check_entry(path: Any, w: Any, where: str) -> list[int]:
    if not isinstance(path, str) or not _PATH.match(path):
        raise ConfigError(f"{where}: field 'widths': key {str(path)[:80]!r} is not a module path")
    if not (
        isinstance(w, list)
        and w
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WIDTH for v in w)
    ):
        raise ConfigError(
            f"{where}: field 'widths.{path}' = {str(w)[:80]}; expected a list of positive integers"
        )
    return list(w)


def apply_widths(module: nn.Module, widths: Any, where: str) -> None:
    """Resize the layers of ``module`` named in ``widths`` (module docstring) in place; weights are fresh
    (random) and keep the replaced layer's ``requires_grad``, device and dtype."""
    if not isinstance(widths, Mapping):
        raise ConfigError(f"{where}: field 'widths' must be a mapping of module path -> widths")
    layers = dict(module.named_modules())
    for path, w in widths.items():
        w = _check_entry(path, w, where)
        old = layers.get(path)
        kind = _kind(old) if old is not None else None
        if kind is None:
            have = type(old).__name__ if old is not None else "no such layer"
            raise ConfigError(
                f"{where}: field 'widths.{path}': the model built from the YAML has {have} there; expected a "
                f"Conv2d, BatchNorm2d or Linear"
            )
        form, n = _KINDS[kind]
        if len(w) != n:
            raise ConfigError(f"{where}: field 'widths.{path}' = {w}; a {kind.__name__} takes {form}")
        new = _resized(old, w, where, path)
        new.train(old.training)
        for p_new, p_old in zip(new.parameters(), old.parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)
        parent, _, name = path.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, new)
        layers[path] = new


def _resized(old: nn.Module, w: list[int], where: str, path: str) -> nn.Module:
    ref = next(iter(old.parameters()), None)
    ref = ref if ref is not None else next(iter(old.buffers()))
    kw: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype}
    if isinstance(old, nn.Conv2d):
        c_in, c_out, groups = w
        if c_in % groups or c_out % groups:
            raise ConfigError(
                f"{where}: field 'widths.{path}' = {w}: groups must divide in_channels and out_channels"
            )
        return nn.Conv2d(
            c_in, c_out, old.kernel_size, old.stride, old.padding, old.dilation, groups, old.bias is not None,
            old.padding_mode, **kw,
        )  # fmt: skip
    if isinstance(old, nn.BatchNorm2d):
        return nn.BatchNorm2d(w[0], old.eps, old.momentum, old.affine, old.track_running_stats, **kw)
    return nn.Linear(w[0], w[1], old.bias is not None, **kw)
