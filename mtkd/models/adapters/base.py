"""The one interface every model adapter implements.

An adapter is an ``nn.Module`` whose ``forward(images, features=())`` returns a ``MultiTaskOutput``
(``seg`` logits ``[B, C_seg, H, W]`` and a ``DetOutput`` of **raw** head outputs, in train and eval mode alike;
decoding and NMS live in ``mtkd.models.postprocess``). ``arch()`` returns a description made only of
JSON-like values (dict/list/str/int/float/bool/None) from which ``mtkd.models.build_from_arch`` rebuilds the
same architecture, including pruned channel widths, so checkpoints never pickle modules.

Construction protocol (every adapter family has one builder, as timm's ``_builder.py`` gives every model family):

- ``Adapter.from_config(config, nc_det, nc_seg, det_names, seg_names)`` builds a fresh model from a user config;
- ``Adapter.from_arch(arch, *, trust_code, where)`` rebuilds one from ``arch()`` (data read from a file).

Both run one shared prologue: unknown keys (not in ``config_keys`` / ``arch_keys``) raise ``ConfigError`` with a
did-you-mean hint (``_common.check_keys``), and class names given as arguments win over the config's
``det_names`` / ``seg_names`` / ``seg_tasks``. Each adapter implements only its specific part, ``_from_config`` /
``_from_arch``.

Segmentation tasks: a model has no seg task (det-only), the single task ``"seg"`` (``seg_names``, ``out.seg``), or
several named tasks (``seg_tasks={"drivable": [...], "lane": [...]}``, ``out.seg_tasks``). ``model.seg_tasks`` is
``{task: class names}`` in every case (``{"seg": seg_names}`` for one task, ``{}`` for none), so losses and
evaluation iterate ``for task, names in model.seg_tasks.items(): logits = out[task]``. ``seg_names`` / ``nc_seg``
are the single task's and raise ``ConfigError`` on a multi-task model (code written for one task fails loudly).
``from_config(..., seg_tasks=...)`` with several tasks reaches only adapters with ``supports_seg_tasks``.
Each adapter module also keeps module-level ``build`` / ``from_arch`` functions (one-line delegations, what
``mtkd.models.build`` dispatches to) and names its protocol class ``ADAPTER``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import check_keys, check_seg_tasks
from mtkd.models.outputs import SINGLE_SEG_TASK, DetKind, MultiTaskOutput
from mtkd.models.trust import TrustCode


@dataclass(frozen=True)
class DetSpec:
    """What must agree between a teacher's and a student's detection heads for logit distillation."""

    kind: DetKind
    num_classes: int
    strides: tuple[int, ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...] | None = None  # [nl][na](w, h) pixels, anchor heads
    reg_max: int | None = None  # DFL bins, anchor-free heads


class MultiTaskAdapter(nn.Module):
    """Base class. Subclasses set ``det_names``/``seg_names`` and implement ``forward``, ``arch``, ``det_spec``;
    to be built from configs and arch descriptions they set the class attributes below and implement
    ``_from_config`` / ``_from_arch`` (module docstring)."""

    #: registry name of the adapter kind ("native", "ultralytics", "smp", "composite", "generic")
    adapter_name: ClassVar[str] = "base"
    #: prefix of this adapter's config errors ("generic adapter"); errors about an arch add " arch"
    adapter_label: ClassVar[str] = "adapter"
    #: the keys ``from_config`` accepts
    config_keys: ClassVar[tuple[str, ...]] = ()
    #: the keys ``from_arch`` accepts; ``None``: the same as ``config_keys``
    arch_keys: ClassVar[tuple[str, ...] | None] = None
    #: whether the adapter can be built with several named seg tasks; its ``_from_config`` then takes a
    #: ``seg_tasks`` keyword (``{task: names}``, or ``None`` for a single-task/det-only build)
    supports_seg_tasks: ClassVar[bool] = False
    #: whether ``forward`` takes ``seg_upsample=False``: the seg outputs (``seg`` / ``seg_tasks``) are then the
    #: head's logits before their bilinear upsampling to the input size (``[B, C, H/8, W/8]`` for the built-in
    #: head, the same tensors as ``seg_head_logits``). Distillation asks the teacher for them
    #: (``DistillTask.teacher_outputs``): every seg KD loss resizes the teacher's logits to the student's size
    #: with that same interpolation, so the full-size tensor would be computed for nothing
    supports_seg_head_resolution: ClassVar[bool] = False

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        nc_det: int | None = None,
        nc_seg: int | None = None,
        det_names: Sequence[str] | None = None,
        seg_names: Sequence[str] | None = None,
        *,
        seg_tasks: Mapping[str, Sequence[str]] | None = None,
    ) -> MultiTaskAdapter:
        """Build a fresh model from a config dict (the adapter module's docstring lists its keys).

        Prologue: every key must be in ``config_keys`` (``ConfigError`` with a did-you-mean hint otherwise); for an
        adapter whose config may hold ``det_names`` / ``seg_names`` / ``seg_tasks``, non-empty arguments win over
        them. ``seg_tasks={"seg": names}`` is ``seg_names=names``; several tasks are refused (one line) unless the
        adapter ``supports_seg_tasks``, and together with ``seg_names`` / ``nc_seg``. Then ``_from_config`` (class
        counts ``nc_*`` may be ``None``: take them from the names or the model)."""
        check_keys(config, cls.config_keys, cls.adapter_label)
        if config.get("seg_names") and config.get("seg_tasks"):
            raise ConfigError(f"{cls.adapter_label}: give field 'seg_names' or field 'seg_tasks', not both")
        if "det_names" in cls.config_keys:
            det_names = det_names or config.get("det_names")
        if not seg_tasks and not seg_names and "seg_tasks" in cls.config_keys:
            seg_tasks = config.get("seg_tasks")
        tasks = check_seg_tasks(seg_tasks, cls.adapter_label) if seg_tasks else None
        if tasks is not None and (seg_names or nc_seg):
            raise ConfigError(
                f"{cls.adapter_label}: give seg_names / nc_seg (one seg task) or seg_tasks (several), not both"
            )
        if tasks is not None and list(tasks) == [SINGLE_SEG_TASK]:
            seg_names, tasks = tasks[SINGLE_SEG_TASK], None
        if tasks is None and "seg_names" in cls.config_keys:
            seg_names = seg_names or config.get("seg_names")
        if tasks is not None and not cls.supports_seg_tasks:
            raise ConfigError(
                f"{cls.adapter_label}: several segmentation tasks ({', '.join(tasks)}) are not supported by this "
                f"adapter; give it one task, or use the native, generic or composite adapter"
            )
        extra: dict[str, Any] = {"seg_tasks": tasks} if cls.supports_seg_tasks else {}
        return cls._from_config(
            config, nc_det=nc_det, nc_seg=nc_seg, det_names=det_names, seg_names=seg_names, **extra
        )

    @classmethod
    def from_arch(
        cls, arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch"
    ) -> MultiTaskAdapter:
        """Rebuild the architecture ``arch()`` described (random weights; the checkpoint's state_dict follows).

        ``arch`` is data from a file (``where``): nothing it names is imported unless ``trust_code`` allows it
        (``mtkd.models.trust``). Prologue: every key must be in ``arch_keys``; then ``_from_arch``."""
        keys = cls.config_keys if cls.arch_keys is None else cls.arch_keys
        check_keys(arch, keys, f"{cls.adapter_label} arch")
        return cls._from_arch(arch, trust_code=trust_code, where=where)

    @classmethod
    def _from_config(
        cls,
        config: Mapping[str, Any],
        *,
        nc_det: int | None,
        nc_seg: int | None,
        det_names: Sequence[str] | None,
        seg_names: Sequence[str] | None,
    ) -> MultiTaskAdapter:  # pragma: no cover
        """The adapter-specific part of ``from_config`` (keys already checked, names already merged)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    @classmethod
    def _from_arch(
        cls, arch: Mapping[str, Any], *, trust_code: TrustCode, where: str
    ) -> MultiTaskAdapter:  # pragma: no cover
        """The adapter-specific part of ``from_arch`` (keys already checked)."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from an arch description")

    # ------------------------------------------------------------------------------------------ instance

    def __init__(
        self,
        *,
        det_names: Sequence[str] = (),
        seg_names: Sequence[str] = (),
        seg_tasks: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``seg_names``: the single seg task's classes; ``seg_tasks``: several named tasks (module docstring);
        not both. ``seg_tasks={"seg": names}`` is the single task."""
        super().__init__()
        self.det_names = list(det_names)
        tasks = check_seg_tasks(seg_tasks, self.adapter_label) if seg_tasks else {}
        if tasks and seg_names:
            raise ConfigError(
                f"{self.adapter_label}: give seg_names (one seg task) or seg_tasks (several), not both"
            )
        self._seg_tasks: dict[str, list[str]] = tasks or (
            {SINGLE_SEG_TASK: list(seg_names)} if seg_names else {}
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle a model saved before ``seg_tasks`` existed (its ``seg_names`` was a plain attribute)."""
        if "_seg_tasks" not in state:
            names = list(state.pop("seg_names", None) or ())
            state["_seg_tasks"] = {SINGLE_SEG_TASK: names} if names else {}
        super().__setstate__(state)

    @property
    def seg_tasks(self) -> dict[str, list[str]]:
        """``{task: class names}`` of every seg task, in output order: ``{"seg": seg_names}`` for a single-task
        model, ``{}`` for a det-only one (a copy)."""
        return {t: list(n) for t, n in self._seg_tasks.items()}

    @property
    def multi_seg(self) -> bool:
        """Whether the model has named seg tasks (``out.seg_tasks``) rather than the single ``out.seg``."""
        return bool(self._seg_tasks) and list(self._seg_tasks) != [SINGLE_SEG_TASK]

    @property
    def seg_names(self) -> list[str]:
        """Class names of the single seg task (``[]`` for a det-only model); ``ConfigError`` for a multi-task model,
        so that code written for one task cannot silently take one of several (use ``seg_tasks``)."""
        if self.multi_seg:
            raise ConfigError(
                f"{self.adapter_label}: this model has segmentation tasks {', '.join(self._seg_tasks)}; this part of "
                f"mtkd handles a single 'seg_names' task (use model.seg_tasks)"
            )
        return self._seg_tasks.get(SINGLE_SEG_TASK, [])

    @seg_names.setter
    def seg_names(self, names: Sequence[str]) -> None:
        self._seg_tasks = {SINGLE_SEG_TASK: list(names)} if names else {}

    @property
    def nc_det(self) -> int:
        return len(self.det_names)

    @property
    def nc_seg(self) -> int:
        """Number of classes of the single seg task (``ConfigError`` for a multi-task model, as ``seg_names``)."""
        return len(self.seg_names)

    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:  # pragma: no cover
        """images: ``[B, 3, H, W]`` float in [0, 1], H and W multiples of 32 (adapters with
        ``supports_seg_head_resolution`` also take ``seg_upsample: bool = True``, keyword-only)."""
        raise NotImplementedError

    def arch(self) -> dict[str, Any]:  # pragma: no cover
        """JSON-like description that rebuilds this architecture (read from the live modules, so pruned
        widths are captured). Must contain ``"adapter": self.adapter_name``."""
        raise NotImplementedError

    def det_spec(self) -> DetSpec | None:  # pragma: no cover
        """Detection-head description, ``None`` for a seg-only model."""
        raise NotImplementedError

    def feature_names(self) -> list[str]:
        """Short names accepted by ``forward(..., features=...)`` (e.g. ``["p3", "p4", "p5"]``)."""
        return []
