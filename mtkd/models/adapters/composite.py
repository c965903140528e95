"""Composite adapter: a detection model and a segmentation model acting as one multi-task model.

The usual case is a teacher made of two single-task models (one teacher per task)::

    adapter: composite
    det: {adapter: ultralytics, model: yolov8n.yaml}                          # any adapter with a det head
    seg: {adapter: smp, arch: Unet, encoder_name: tu-resnet10t}               # any adapter with a seg head

``forward`` runs both members on the same images and takes ``det`` from the first and ``seg`` from the second
(a member's other output, if it has one, is ignored). Feature taps are the members' names prefixed with ``det.``
and ``seg.`` (``det.p3``, ``seg.enc``). State-dict keys are prefixed the same way. ``arch()`` is
``{"adapter": "composite", "det": det.arch(), "seg": seg.arch()}``; rebuilding it passes ``trust_code`` and ``where``
on to both members (``mtkd.models.trust``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.outputs import MultiTaskOutput
from mtkd.models.trust import TrustCode

_WHERE = "composite adapter"
_MEMBERS = ("det", "seg")


class CompositeAdapter(MultiTaskAdapter):
    """``det`` from one adapter, ``seg`` from another.

    Args:
        det: an adapter whose ``det_spec()`` is not ``None``.
        seg: an adapter with segmentation classes.
    """

    adapter_name = "composite"
    adapter_label = _WHERE
    config_keys = ("adapter", "head", *_MEMBERS)

    def __init__(self, *, det: MultiTaskAdapter, seg: MultiTaskAdapter) -> None:
        for name, member in (("det", det), ("seg", seg)):
            if not isinstance(member, MultiTaskAdapter):
                raise ConfigError(
                    f"{_WHERE}: member {name!r} must be a MultiTaskAdapter, got {type(member).__name__}"
                )
        if det.det_spec() is None:
            raise ConfigError(f"{_WHERE}: member 'det' ({det.adapter_name}) has no detection head")
        if not seg.seg_names:
            raise ConfigError(f"{_WHERE}: member 'seg' ({seg.adapter_name}) has no segmentation classes")
        super().__init__(det_names=det.det_names, seg_names=seg.seg_names)
        self.det = det
        self.seg = seg

    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:
        """images ``[B, 3, H, W]`` → ``det`` of the det member, ``seg`` logits of the seg member."""
        split: dict[str, list[str]] = {"det": [], "seg": []}
        for name in features:
            member, _, rest = name.partition(".")
            if member not in split or not rest:
                raise ConfigError(
                    f"features: unknown feature name {name!r} for a composite model; prefix the member's name with "
                    f"'det.' or 'seg.' (available: {', '.join(self.feature_names()) or 'none'})"
                )
            split[member].append(rest)
        d = self.det(images, features=split["det"])
        s = self.seg(images, features=split["seg"])
        feats = {f"det.{k}": v for k, v in d.features.items()} | {
            f"seg.{k}": v for k, v in s.features.items()
        }
        return MultiTaskOutput(seg=s.seg, det=d.det, features=feats)

    def det_spec(self) -> DetSpec | None:
        return self.det.det_spec()

    def feature_names(self) -> list[str]:
        return [f"det.{n}" for n in self.det.feature_names()] + [f"seg.{n}" for n in self.seg.feature_names()]

    def ignored_layers(self) -> list[nn.Module]:
        return [m for member in (self.det, self.seg) for m in getattr(member, "ignored_layers", list)()]

    def arch(self) -> dict[str, Any]:
        return {"adapter": self.adapter_name, "det": self.det.arch(), "seg": self.seg.arch()}

    # ---------------------------------------------------------------- construction (base.MultiTaskAdapter)
    @classmethod
    def _from_config(
        cls,
        config: Mapping[str, Any],
        *,
        nc_det: int | None,
        nc_seg: int | None,
        det_names: Sequence[str] | None,
        seg_names: Sequence[str] | None,
    ) -> CompositeAdapter:
        """Build both members with ``mtkd.models.build.build_model``: the det member gets the det classes (and no
        seg classes) and ``head``, the seg member the seg classes (and no det classes)."""
        from mtkd.models.build import build_model  # lazy: build imports the adapters

        det_cfg, seg_cfg = _members(config, _WHERE)
        if config.get("head") is not None and "head" not in det_cfg:  # build_model(..., head=) meant det
            det_cfg = {**det_cfg, "head": config["head"]}
        det_names = list(det_names) if det_names is not None else None
        seg_names = list(seg_names) if seg_names is not None else None
        det = build_model(det_cfg, nc_det=nc_det, det_names=det_names, nc_seg=0, seg_names=[])
        seg = build_model(seg_cfg, nc_det=0, det_names=[], nc_seg=nc_seg, seg_names=seg_names)
        return cls(det=det, seg=seg)

    @classmethod
    def _from_arch(cls, arch: Mapping[str, Any], *, trust_code: TrustCode, where: str) -> CompositeAdapter:
        """Inverse of ``arch()``: each member through ``mtkd.models.build.build_from_arch`` with the same
        ``trust_code`` and ``where`` (SECURITY: a generic member's import path needs the same opt-in)."""
        from mtkd.models.build import build_from_arch

        det_arch, seg_arch = _members(arch, f"{_WHERE} arch")
        return cls(det=build_from_arch(det_arch, trust_code=trust_code, where=where),
                   seg=build_from_arch(seg_arch, trust_code=trust_code, where=where))  # fmt: skip


def _members(config: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The ``det`` and ``seg`` member configs (each a dict with an ``adapter`` key, not itself composite)."""
    for key in _MEMBERS:
        if not isinstance(config.get(key), Mapping) or "adapter" not in config[key]:
            raise ConfigError(f"{where}: field {key!r} must be a model config dict with an 'adapter' key")
        if config[key]["adapter"] == "composite":
            raise ConfigError(f"{where}: field {key!r}: a composite member cannot itself be composite")
    return config["det"], config["seg"]


#: the protocol class ``mtkd.models.build`` may dispatch to
ADAPTER = CompositeAdapter


def build(
    config: Mapping[str, Any],
    nc_det: int | None = None,
    nc_seg: int | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
) -> CompositeAdapter:
    """``CompositeAdapter.from_config`` (kept for ``mtkd.models.build``'s module dispatch)."""
    return CompositeAdapter.from_config(config, nc_det, nc_seg, det_names, seg_names)


def from_arch(
    arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch"
) -> CompositeAdapter:
    """``CompositeAdapter.from_arch``: both members rebuilt with the same ``trust_code`` and ``where``."""
    return CompositeAdapter.from_arch(arch, trust_code=trust_code, where=where)
