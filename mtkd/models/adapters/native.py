"""Adapter ``native``: the built-in ``yolo_mt`` family (``mtkd.models.yolo_mt.YoloMT`` is itself the adapter).

Config keys (``build_model({"adapter": "native", ...})`` or ``build_model("yolo_mt_s", head=..., **kw)``)::

    name: yolo_mt_s          # or scale: s   (n | s | m)
    head: anchor             # anchor | anchor_free
    anchors: [[[w, h], ...], ...]   # optional, anchor head: 3 levels x na anchors, input pixels
    reg_max: 16              # optional, anchor-free head: DFL bins
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtkd.errors import ConfigError
from mtkd.models.adapters.generic import check_keys
from mtkd.models.yolo_mt import HEAD_KINDS, SCALES, STRIDES, YoloMT, default_layers

CONFIG_KEYS = ("adapter", "name", "scale", "head", "anchors", "reg_max")
NAME_PREFIX = "yolo_mt_"
NAMES = tuple(NAME_PREFIX + s for s in SCALES)


def _fail(msg: str) -> ConfigError:
    return ConfigError(f"model config: {msg}")


def _check_anchors(anchors: Any, where: str) -> list[list[list[float]]] | None:
    if anchors is None:
        return None
    try:
        a = [[[float(v) for v in wh] for wh in lvl] for lvl in anchors]
    except (TypeError, ValueError):
        raise _fail(f"{where} 'anchors' must be a list of 3 levels of [w, h] pairs") from None
    if (
        len(a) != 3
        or not a[0]
        or any(len(lvl) != len(a[0]) for lvl in a)
        or any(len(wh) != 2 for lvl in a for wh in lvl)
    ):
        raise _fail(f"{where} 'anchors' must be 3 levels with the same number of [w, h] pairs, got {anchors}")
    if any(v <= 0 for lvl in a for wh in lvl for v in wh):
        raise _fail(f"{where} 'anchors' must be positive pixel sizes, got {anchors}")
    return a


def _check_names(det_names: Sequence[str], seg_names: Sequence[str]) -> None:
    if len(det_names) < 1:
        raise _fail("the native yolo_mt model needs at least one detection class (nc_det >= 1)")
    if len(seg_names) < 1:
        raise _fail("the native yolo_mt model needs at least one segmentation class (nc_seg >= 1)")


def build(
    config: dict[str, Any], nc_det: int, nc_seg: int, det_names: Sequence[str], seg_names: Sequence[str]
) -> YoloMT:
    """Build an unpruned ``yolo_mt`` model from a config dict (keys above); raises ``ConfigError``."""
    from mtkd.models.build import did_you_mean

    for key in config:
        if key not in CONFIG_KEYS:
            raise _fail(f"unknown key {key!r} for adapter 'native'{did_you_mean(key, CONFIG_KEYS)}")
    name = config.get("name")
    scale = config.get("scale")
    if name is not None:
        if name not in NAMES:
            raise _fail(
                f"unknown model name {name!r}; expected one of {list(NAMES)}{did_you_mean(name, NAMES)}"
            )
        scale = name[len(NAME_PREFIX) :] if scale is None else scale
    if scale not in SCALES:
        raise _fail(f"'scale' must be one of {list(SCALES)}, got {scale!r}")
    head = config.get("head", "anchor")
    if head not in HEAD_KINDS:
        raise _fail(
            f"'head' must be one of {list(HEAD_KINDS)}, got {head!r}{did_you_mean(str(head), HEAD_KINDS)}"
        )
    reg_max = config.get("reg_max", 16)
    if not isinstance(reg_max, int) or isinstance(reg_max, bool) or reg_max < 1:
        raise _fail(f"'reg_max' must be a positive integer, got {reg_max!r}")
    det_names, seg_names = list(det_names), list(seg_names)
    _check_names(det_names, seg_names)
    return YoloMT(
        layers=default_layers(scale),
        head=head,
        det_names=det_names,
        seg_names=seg_names,
        anchors=_check_anchors(config.get("anchors"), "native"),
        reg_max=reg_max,
        scale=scale,
    )


#: the keys of ``YoloMT.arch()``
ARCH_KEYS = ("adapter", "family", "scale", "head", "det_names", "seg_names", "strides", "anchors", "reg_max", "layers")


def from_arch(arch: dict[str, Any], *, trust_code: Any = False, where: str = "arch") -> YoloMT:
    """Rebuild a (possibly pruned) ``yolo_mt`` model from ``YoloMT.arch()``; raises ``ConfigError`` if malformed.

    Imports nothing the arch names (``trust_code`` is accepted for the common ``from_arch`` signature). An
    unknown key (e.g. from a newer mtkd) is refused rather than dropped."""
    check_keys(arch, ARCH_KEYS, f"{where}: native arch")
    try:
        if arch.get("family", "yolo_mt") != "yolo_mt":
            raise _fail(f"arch 'family' must be 'yolo_mt' for adapter 'native', got {arch.get('family')!r}")
        _check_names(arch["det_names"], arch["seg_names"])
        if list(arch.get("strides", STRIDES)) != list(STRIDES):
            raise _fail(
                f"native arch 'strides' must be {list(STRIDES)} (fixed topology), got {arch['strides']}"
            )
        return YoloMT(
            layers=arch["layers"],
            head=arch["head"],
            det_names=arch["det_names"],
            seg_names=arch["seg_names"],
            anchors=_check_anchors(arch.get("anchors"), "arch"),
            reg_max=int(arch.get("reg_max") or 16),
            scale=arch.get("scale"),
        )
    except KeyError as e:
        raise _fail(f"native arch is missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise _fail(f"native arch is malformed: {e}") from None
