"""Adapter ``native``: the built-in ``yolo_mt`` family (``mtkd.models.yolo_mt.YoloMT`` is itself the adapter).

Config keys (``build_model({"adapter": "native", ...})`` or ``build_model("yolo_mt_s", head=..., **kw)``)::

    name: yolo_mt_s          # or scale: s   (n | s | m)
    head: anchor             # anchor | anchor_free
    anchors: [[10,13, 16,30, 33,23], ...]   # optional, anchor head: 3 levels x na anchors, input pixels
                                            # (YOLOv5's flat lists, or nested [[w, h], ...] pairs)
    reg_max: 16              # optional, anchor-free head: DFL bins

Class names come from the arguments: ``build_model("yolo_mt_n", det_names=[...], seg_names=[...])`` for one seg
task, or ``seg_tasks={"drivable": [...], "lane": [...]}`` for one seg head per task (``YoloMT``). The arch of a
multi-task model holds ``seg_tasks`` (``{task: names}``) instead of ``seg_names`` and ``layers.seg`` per task; a
single-task arch is unchanged.

``YoloMT`` (in ``mtkd.models.yolo_mt``) is the model; ``NativeAdapter`` here only carries the construction protocol
(``base.MultiTaskAdapter.from_config`` / ``from_arch``) for it and builds plain ``YoloMT`` modules, so saved and
pickled models keep naming ``mtkd.models.yolo_mt.YoloMT``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import check_seg_tasks
from mtkd.models.adapters.det_layouts import normalize_anchors
from mtkd.models.outputs import HEAD_KINDS
from mtkd.models.trust import TrustCode
from mtkd.models.yolo_mt import SCALES, STRIDES, YoloMT, default_layers
from mtkd.utils.suggest import did_you_mean

CONFIG_KEYS = ("adapter", "name", "scale", "head", "anchors", "reg_max")
#: the keys of ``YoloMT.arch()``
ARCH_KEYS = (
    "adapter", "family", "scale", "head", "det_names", "seg_names", "seg_tasks", "strides", "anchors", "reg_max",
    "layers",
)  # fmt: skip
NAME_PREFIX = "yolo_mt_"
NAMES = tuple(NAME_PREFIX + s for s in SCALES)


def _fail(msg: str) -> ConfigError:
    return ConfigError(f"model config: {msg}")


def _check_anchors(anchors: Any, where: str) -> list[list[list[float]]] | None:
    """``anchors`` of a config or an arch, flat (YOLOv5) or nested (``det_layouts.normalize_anchors``) →
    ``[3][na][2]`` pixels, or ``None`` (the default anchors)."""
    if anchors is None:
        return None
    return normalize_anchors(anchors, len(STRIDES), where=f"model config: {where}")


def _check_names(det_names: Sequence[str], seg_names: Sequence[str], seg_tasks: Any = None) -> None:
    if len(det_names) < 1:
        raise _fail("the native yolo_mt model needs at least one detection class (nc_det >= 1)")
    if seg_tasks is None and len(seg_names) < 1:
        raise _fail("the native yolo_mt model needs at least one segmentation class (nc_seg >= 1)")


def _check_seg_layers(layers: Any, seg_tasks: dict[str, list[str]], where: str) -> None:
    """A multi-task arch's ``layers.seg`` must be ``{task: {lat, fuse, conv}}`` over its tasks."""
    seg = layers.get("seg") if isinstance(layers, Mapping) else None
    if not isinstance(seg, Mapping) or any(t not in seg_tasks for t in seg):
        raise _fail(
            f"{where} 'layers.seg' must map each of the seg tasks {list(seg_tasks)} to its head widths"
        )


class NativeAdapter(YoloMT):
    """Construction protocol of the built-in family; ``from_config`` / ``from_arch`` return ``YoloMT`` modules
    (this class is never instantiated)."""

    adapter_label = "native adapter"
    config_keys = CONFIG_KEYS
    arch_keys = ARCH_KEYS
    supports_seg_tasks = True

    @classmethod
    def _from_config(
        cls,
        config: Mapping[str, Any],
        *,
        nc_det: int | None,
        nc_seg: int | None,
        det_names: Sequence[str] | None,
        seg_names: Sequence[str] | None,
        seg_tasks: dict[str, list[str]] | None = None,
    ) -> YoloMT:
        """Build an unpruned ``yolo_mt`` model from a config dict (keys above), one seg head per task of
        ``seg_tasks`` when given; raises ``ConfigError``."""
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
        det_names, seg_names = list(det_names or ()), list(seg_names or ())
        _check_names(det_names, seg_names, seg_tasks)
        return YoloMT(
            layers=default_layers(scale),
            head=head,
            det_names=det_names,
            seg_names=seg_names,
            seg_tasks=seg_tasks,
            anchors=_check_anchors(config.get("anchors"), "native"),
            reg_max=reg_max,
            scale=scale,
        )

    @classmethod
    def _from_arch(cls, arch: Mapping[str, Any], *, trust_code: TrustCode, where: str) -> YoloMT:
        """Rebuild a (possibly pruned) ``yolo_mt`` model from ``YoloMT.arch()``; ``ConfigError`` if malformed.

        Imports nothing the arch names (``trust_code`` is accepted for the common signature). An unknown key
        (e.g. from a newer mtkd) is refused by the prologue rather than dropped."""
        try:
            if arch.get("family", "yolo_mt") != "yolo_mt":
                raise _fail(
                    f"arch 'family' must be 'yolo_mt' for adapter 'native', got {arch.get('family')!r}"
                )
            if ("seg_names" in arch) == ("seg_tasks" in arch):
                raise _fail("native arch must have exactly one of 'seg_names' (one seg task) or 'seg_tasks'")
            seg_tasks = check_seg_tasks(arch["seg_tasks"], "native arch") if "seg_tasks" in arch else None
            if seg_tasks is not None and list(seg_tasks) != ["seg"]:
                _check_seg_layers(arch["layers"], seg_tasks, "arch")
            _check_names(arch["det_names"], arch.get("seg_names", ()), seg_tasks)
            if list(arch.get("strides", STRIDES)) != list(STRIDES):
                raise _fail(
                    f"native arch 'strides' must be {list(STRIDES)} (fixed topology), got {arch['strides']}"
                )
            return YoloMT(
                layers=arch["layers"],
                head=arch["head"],
                det_names=arch["det_names"],
                seg_names=arch.get("seg_names", ()),
                seg_tasks=seg_tasks,
                anchors=_check_anchors(arch.get("anchors"), "native arch"),
                reg_max=int(arch.get("reg_max") or 16),
                scale=arch.get("scale"),
            )
        except KeyError as e:
            raise _fail(f"native arch is missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise _fail(f"native arch is malformed: {e}") from None


#: the protocol class ``mtkd.models.build`` may dispatch to
ADAPTER = NativeAdapter


def build(
    config: Mapping[str, Any],
    nc_det: int | None = None,
    nc_seg: int | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
    *,
    seg_tasks: Mapping[str, Sequence[str]] | None = None,
) -> YoloMT:
    """``NativeAdapter.from_config`` (kept for ``mtkd.models.build``'s module dispatch)."""
    return NativeAdapter.from_config(config, nc_det, nc_seg, det_names, seg_names, seg_tasks=seg_tasks)


def from_arch(arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch") -> YoloMT:
    """``NativeAdapter.from_arch`` (imports nothing the arch names)."""
    return NativeAdapter.from_arch(arch, trust_code=trust_code, where=where)
