"""Composite adapter: a detection model and segmentation model(s) acting as one multi-task model.

The usual case is a teacher made of single-task models (one teacher per task)::

    adapter: composite
    det: {adapter: ultralytics, model: yolov8n.yaml}                          # any adapter with a det head
    seg: {adapter: smp, arch: Unet, encoder_name: tu-resnet10t}               # any adapter with a seg head

With several seg tasks (``build_model(cfg, det_names=..., seg_tasks={"drivable": [...], "lane": [...]})``), ``seg``
is either one model that has those tasks itself (e.g. a ``generic`` member mapping both of YOLOP's seg heads), or
one model per task, each built as a single-task model with that task's classes::

    seg:
      drivable: {adapter: smp, arch: Unet, encoder_name: tu-resnet10t}
      lane: {adapter: generic, target: yolop.models:YOLOP, outputs: {seg: 2}, ...}

``forward`` runs every member on the same images and takes ``det`` from the det member and the seg logits from the
seg member(s) (a member's other outputs, if any, are ignored). Members are named ``det``, ``seg`` or ``seg.<task>``:
feature taps are the members' names prefixed with the member's name (``det.p3``, ``seg.enc``, ``seg.lane.enc``),
state-dict keys likewise. ``arch()`` is ``{"adapter": "composite", "det": det.arch(), "seg": seg.arch()}``, with
``"seg": {task: member.arch()}`` for one member per task; rebuilding it passes ``trust_code`` and ``where`` on to
every member (``mtkd.models.trust``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.outputs import SINGLE_SEG_TASK, MultiTaskOutput
from mtkd.models.trust import TrustCode
from mtkd.utils.suggest import did_you_mean

_WHERE = "composite adapter"
_MEMBERS = ("det", "seg")


def _check_member(name: str, member: Any) -> None:
    if not isinstance(member, MultiTaskAdapter):
        raise ConfigError(
            f"{_WHERE}: member {name!r} must be a MultiTaskAdapter, got {type(member).__name__}"
        )


class CompositeAdapter(MultiTaskAdapter):
    """``det`` from one adapter, the seg output(s) from another, or from one adapter per seg task.

    Args:
        det: an adapter whose ``det_spec()`` is not ``None``.
        seg: an adapter with segmentation classes (its seg tasks become the composite's), or ``{task: adapter}``,
            each member with exactly one seg task (its output becomes that task's logits).
    """

    adapter_name = "composite"
    adapter_label = _WHERE
    config_keys = ("adapter", "head", *_MEMBERS)
    supports_seg_tasks = True

    def __init__(
        self, *, det: MultiTaskAdapter, seg: MultiTaskAdapter | Mapping[str, MultiTaskAdapter]
    ) -> None:
        _check_member("det", det)
        if det.det_spec() is None:
            raise ConfigError(f"{_WHERE}: member 'det' ({det.adapter_name}) has no detection head")
        if isinstance(seg, Mapping):  # one member per seg task
            if not seg or SINGLE_SEG_TASK in seg:
                raise ConfigError(
                    f"{_WHERE}: member 'seg' as a mapping needs named seg tasks, got {list(seg)}"
                )
            for task, member in seg.items():
                _check_member(f"seg.{task}", member)
                if len(member.seg_tasks) != 1:
                    raise ConfigError(
                        f"{_WHERE}: member 'seg.{task}' ({member.adapter_name}) must have exactly one seg task, "
                        f"has {list(member.seg_tasks) or 'none'}"
                    )
            tasks = {t: next(iter(m.seg_tasks.values())) for t, m in seg.items()}
            super().__init__(det_names=det.det_names, seg_tasks=tasks)
            if any(hasattr(nn.ModuleDict(), t) for t in tasks):
                raise ConfigError(
                    f"{_WHERE}: a seg task name clashes with a torch.nn.ModuleDict attribute: {list(tasks)}"
                )
            self.seg: nn.Module = nn.ModuleDict(dict(seg))
        else:
            _check_member("seg", seg)
            if not seg.seg_tasks:
                raise ConfigError(f"{_WHERE}: member 'seg' ({seg.adapter_name}) has no segmentation classes")
            super().__init__(det_names=det.det_names, seg_tasks=seg.seg_tasks)
            self.seg = seg
        self.det = det

    def members(self) -> dict[str, MultiTaskAdapter]:
        """``{"det": det, "seg": seg}`` or ``{"det": det, "seg.<task>": member, ...}`` (feature-name prefixes)."""
        if isinstance(self.seg, nn.ModuleDict):
            return {"det": self.det} | {f"seg.{t}": m for t, m in self.seg.items()}
        return {"det": self.det, "seg": self.seg}

    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:
        """images ``[B, 3, H, W]`` → ``det`` of the det member, seg logits of the seg member(s)."""
        members = self.members()
        split: dict[str, list[str]] = {name: [] for name in members}
        for name in features:
            prefix = next((p for p in members if name.startswith(p + ".") and len(name) > len(p) + 1), None)
            if prefix is None:
                raise ConfigError(
                    f"features: unknown feature name {name!r} for a composite model; prefix the member's name with "
                    f"{' or '.join(repr(p + '.') for p in members)} "
                    f"(available: {', '.join(self.feature_names()) or 'none'})"
                )
            split[prefix].append(name[len(prefix) + 1 :])
        outs = {name: m(images, features=split[name]) for name, m in members.items()}
        feats = {f"{name}.{k}": v for name, o in outs.items() for k, v in o.features.items()}
        if isinstance(self.seg, nn.ModuleDict):
            segs = {t: next(iter(outs[f"seg.{t}"].seg_outputs.values())) for t in self.seg}
        else:
            segs = outs["seg"].seg_outputs
        return MultiTaskOutput.from_seg_outputs(segs, det=outs["det"].det, features=feats)

    def det_spec(self) -> DetSpec | None:
        return self.det.det_spec()

    def feature_names(self) -> list[str]:
        return [f"{name}.{n}" for name, m in self.members().items() for n in m.feature_names()]

    def ignored_layers(self) -> list[nn.Module]:
        return [m for member in self.members().values() for m in getattr(member, "ignored_layers", list)()]

    def arch(self) -> dict[str, Any]:
        if isinstance(self.seg, nn.ModuleDict):
            seg: dict[str, Any] = {t: m.arch() for t, m in self.seg.items()}
        else:
            seg = self.seg.arch()
        return {"adapter": self.adapter_name, "det": self.det.arch(), "seg": seg}

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
        seg_tasks: dict[str, list[str]] | None = None,
    ) -> CompositeAdapter:
        """Build every member with ``mtkd.models.build.build_model``: the det member gets the det classes (and no
        seg classes) and ``head``, the seg member the seg classes or ``seg_tasks`` (and no det classes); with one
        member per task, each gets its task's classes (a task of ``seg_tasks`` without a member is left out)."""
        from mtkd.models.build import build_model  # lazy: build imports the adapters

        det_cfg, seg_cfg = _members(config, _WHERE)
        if config.get("head") is not None and "head" not in det_cfg:  # build_model(..., head=) meant det
            det_cfg = {**det_cfg, "head": config["head"]}
        det_names = list(det_names) if det_names is not None else None
        det = build_model(det_cfg, nc_det=nc_det, det_names=det_names, nc_seg=0, seg_names=[])
        no_det: dict[str, Any] = {"nc_det": 0, "det_names": []}
        if _is_task_map(seg_cfg):
            if not seg_tasks:
                raise ConfigError(
                    f"{_WHERE}: field 'seg' has one member per seg task ({', '.join(map(str, seg_cfg))}), so the "
                    f"model needs seg_tasks (the dataset's seg_tasks), not a single seg_names task"
                )
            for task in seg_cfg:
                if task not in seg_tasks:
                    raise ConfigError(
                        f"{_WHERE}: field 'seg.{task}': unknown seg task{did_you_mean(str(task), seg_tasks)}; "
                        f"the seg tasks are {', '.join(seg_tasks)}"
                    )
            seg: Any = {
                t: build_model(seg_cfg[t], seg_names=n, **no_det)
                for t, n in seg_tasks.items()
                if t in seg_cfg
            }
        elif seg_tasks:
            seg = build_model(seg_cfg, seg_tasks=seg_tasks, **no_det)
        else:
            seg_names = list(seg_names) if seg_names is not None else None
            seg = build_model(seg_cfg, nc_seg=nc_seg, seg_names=seg_names, **no_det)
        return cls(det=det, seg=seg)

    @classmethod
    def _from_arch(cls, arch: Mapping[str, Any], *, trust_code: TrustCode, where: str) -> CompositeAdapter:
        """Inverse of ``arch()``: each member through ``mtkd.models.build.build_from_arch`` with the same
        ``trust_code`` and ``where`` (SECURITY: a generic member's import path needs the same opt-in)."""
        from mtkd.models.build import build_from_arch

        det_arch, seg_arch = _members(arch, f"{_WHERE} arch")
        det = build_from_arch(det_arch, trust_code=trust_code, where=where)
        if _is_task_map(seg_arch):
            seg: Any = {
                t: build_from_arch(a, trust_code=trust_code, where=where) for t, a in seg_arch.items()
            }
        else:
            seg = build_from_arch(seg_arch, trust_code=trust_code, where=where)
        return cls(det=det, seg=seg)


def _is_task_map(seg: Mapping[str, Any]) -> bool:
    """Whether a ``seg`` member entry is ``{task: model config}`` rather than one model config."""
    return not isinstance(seg.get("adapter"), str)


def _check_model_config(config: Any, key: str, where: str) -> None:
    if not isinstance(config, Mapping) or not isinstance(config.get("adapter"), str):
        raise ConfigError(f"{where}: field {key!r} must be a model config dict with an 'adapter' key")
    if config["adapter"] == "composite":
        raise ConfigError(f"{where}: field {key!r}: a composite member cannot itself be composite")


def _members(config: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The ``det`` member config and the ``seg`` entry: one model config, or ``{task: model config}``."""
    _check_model_config(config.get("det"), "det", where)
    seg = config.get("seg")
    if isinstance(seg, Mapping) and seg and _is_task_map(seg):
        for task, member in seg.items():
            _check_model_config(member, f"seg.{task}", where)
    else:
        _check_model_config(seg, "seg", where)
    return config["det"], seg


#: the protocol class ``mtkd.models.build`` may dispatch to
ADAPTER = CompositeAdapter


def build(
    config: Mapping[str, Any],
    nc_det: int | None = None,
    nc_seg: int | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
    *,
    seg_tasks: Mapping[str, Sequence[str]] | None = None,
) -> CompositeAdapter:
    """``CompositeAdapter.from_config`` (kept for ``mtkd.models.build``'s module dispatch)."""
    return CompositeAdapter.from_config(config, nc_det, nc_seg, det_names, seg_names, seg_tasks=seg_tasks)


def from_arch(
    arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch"
) -> CompositeAdapter:
    """``CompositeAdapter.from_arch``: both members rebuilt with the same ``trust_code`` and ``where``."""
    return CompositeAdapter.from_arch(arch, trust_code=trust_code, where=where)
