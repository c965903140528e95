"""Typed model outputs shared by every adapter, loss and evaluator (DESIGN.md §2).

``MultiTaskOutput`` holds the segmentation logits and a ``DetOutput``; it reads as attributes
(``out.seg``) and as a mapping (``out["seg"]``, ``out.get("det")``) so code written against plain dicts works.
A model with several segmentation tasks (YOLOP: drivable area + lane lines) fills ``seg_tasks`` instead of
``seg``; ``out.seg_outputs`` gives every seg output as ``{task: logits}`` either way (``{"seg": seg}`` for one task).
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

DetKind = Literal["anchor", "anchor_free"]
#: the detection head kinds, everywhere called ``head`` (config key, arch key, ``build_model(head=...)``)
HEAD_KINDS: tuple[str, ...] = typing.get_args(DetKind)


@dataclass
class DetOutput:
    """Raw detection-head output plus a uniform, flattened view of it.

    Attributes:
        raw: the head's own output, untouched. ``anchor`` heads: list (one per level) of
            ``[B, na, H_l, W_l, 5 + nc]`` (xywh raw, objectness logit, class logits). ``anchor_free`` heads
            (Ultralytics ``Detect``): dict with ``boxes [B, 4*reg_max, A]``, ``scores [B, nc, A]``,
            ``feats`` (list of per-level maps ``[B, 4*reg_max + nc, H_l, W_l]``).
        box: ``[B, A, D_box]`` raw box regression (``D_box = 4`` for anchor heads, ``4 * reg_max`` DFL logits
            for anchor-free heads), ``A`` = all anchors/positions of all levels, level-major order.
        obj: ``[B, A]`` objectness logits, or ``None`` (anchor-free heads have no objectness).
        cls: ``[B, A, C_det]`` class logits.
        kind: ``"anchor"`` (YOLOv5/YOLOP style) or ``"anchor_free"`` (Ultralytics DFL style).
        strides: stride of each level in input pixels, e.g. ``(8, 16, 32)``.
        anchors: ``[nl, na, 2]`` anchor (w, h) in input pixels for anchor heads, ``None`` otherwise.
        reg_max: number of DFL bins per side (anchor-free heads), ``None`` for anchor heads.
    """

    raw: Any
    box: Tensor
    obj: Tensor | None
    cls: Tensor
    kind: DetKind
    strides: tuple[int, ...]
    anchors: Tensor | None = None
    reg_max: int | None = None

    @classmethod
    def from_anchor_levels(
        cls, levels: list[Tensor], *, strides: tuple[int, ...], anchors: Tensor
    ) -> DetOutput:
        """Anchor (YOLOv5/YOLOP) head: per level ``[B, na, H_l, W_l, 5 + nc]`` → flat view in level, anchor, y, x
        order; ``anchors [nl, na, 2]`` pixels."""
        flat = torch.cat([t.flatten(1, 3) for t in levels], dim=1)  # [B, A, 5 + nc]
        return cls(raw=levels, box=flat[..., :4], obj=flat[..., 4], cls=flat[..., 5:], kind="anchor",
                   strides=tuple(strides), anchors=anchors)  # fmt: skip

    @classmethod
    def from_anchor_free(cls, raw: dict[str, Any], *, strides: tuple[int, ...], reg_max: int) -> DetOutput:
        """Anchor-free (Ultralytics DFL) head: ``{"boxes": [B, 4*reg_max, A], "scores": [B, nc, A], "feats"}``."""
        return cls(raw=raw, box=raw["boxes"].transpose(1, 2), obj=None, cls=raw["scores"].transpose(1, 2),
                   kind="anchor_free", strides=tuple(strides), reg_max=int(reg_max))  # fmt: skip

    @property
    def num_classes(self) -> int:
        return int(self.cls.shape[-1])

    @property
    def num_anchors(self) -> int:
        return int(self.box.shape[1])


#: the task name of a single-task model's (and dataset's) segmentation output: ``out.seg``
SINGLE_SEG_TASK = "seg"


@dataclass
class MultiTaskOutput(Mapping):
    """Output of every adapter.

    Attributes:
        seg: ``[B, C_seg, h, w]`` segmentation **logits** (never probabilities) of a single-task model (task name
            ``"seg"``), or ``None`` (det-only model, or a model with named ``seg_tasks``).
        det: ``DetOutput`` or ``None`` for a seg-only model.
        features: named intermediate feature maps requested with ``model(x, features=[...])``,
            e.g. ``{"p3": [B, C3, H/8, W/8]}``; empty when none were requested.
        seg_tasks: several named segmentation tasks, ``{task: [B, C_task, h, w] logits}`` in the model's task
            order (``model.seg_tasks``), e.g. ``{"drivable": [B, 2, H, W], "lane": [B, 2, H, W]}``; empty for a
            single-task or det-only model. ``seg`` and ``seg_tasks`` are never both set (``ValueError``).
        seg_head_logits: ``{task: [B, C_task, h, w]}`` (``"seg"`` for the single task): the seg head's logits
            before its bilinear upsampling to the input size (the built-in head: stride 8), for losses that can
            work at the head's resolution (seg KD); ``{}`` when the adapter does not expose them. Not an output
            of the model (not in the mapping keys, not exported).

    Read every seg output the same way with ``out.seg_outputs`` (``{task: logits}``, ``{"seg": seg}`` for a single
    task, ``{}`` for none) or ``out[task]``. As a mapping the keys are ``"seg"`` (when set), the ``seg_tasks``
    names, then ``"det"`` (when set); ``out["seg"]`` / ``out["det"]`` give ``None`` when absent, as before.
    """

    seg: Tensor | None = None
    det: DetOutput | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    seg_tasks: dict[str, Tensor] = field(default_factory=dict)
    seg_head_logits: dict[str, Tensor] = field(default_factory=dict)

    _KEYS = ("seg", "det")

    def __post_init__(self) -> None:
        if self.seg is not None and self.seg_tasks:
            raise ValueError(
                "MultiTaskOutput: give either seg (the single seg task) or seg_tasks (named tasks), not both"
            )
        bad = [t for t in self.seg_tasks if t in self._KEYS]
        if bad:
            raise ValueError(
                f"MultiTaskOutput: seg_tasks may not name a task {bad[0]!r} (reserved: {', '.join(self._KEYS)}); "
                f"a single seg task goes in seg="
            )

    @classmethod
    def from_seg_outputs(
        cls,
        segs: Mapping[str, Tensor],
        *,
        det: DetOutput | None = None,
        features: dict[str, Tensor] | None = None,
    ) -> MultiTaskOutput:
        """Build from ``{task: logits}``: ``{"seg": t}`` fills ``seg`` (single task), anything else ``seg_tasks``."""
        segs = dict(segs)
        features = {} if features is None else features
        if list(segs) == [SINGLE_SEG_TASK]:
            return cls(seg=segs[SINGLE_SEG_TASK], det=det, features=features)
        return cls(det=det, features=features, seg_tasks=segs)

    @property
    def seg_outputs(self) -> dict[str, Tensor]:
        """Every seg output as ``{task: [B, C_task, h, w] logits}``: ``{"seg": seg}`` for a single-task output,
        ``seg_tasks`` for a multi-task one, ``{}`` for a det-only one."""
        if self.seg is not None:
            return {SINGLE_SEG_TASK: self.seg}
        return dict(self.seg_tasks)

    @property
    def multi_seg(self) -> bool:
        """Whether this output holds named ``seg_tasks`` (rather than the single ``seg``)."""
        return bool(self.seg_tasks)

    def __getitem__(self, key: str) -> Any:
        if key in self._KEYS:
            return getattr(self, key)
        if key in self.seg_tasks:
            return self.seg_tasks[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        keys = (["seg"] if self.seg is not None else []) + list(self.seg_tasks)
        return iter(keys + (["det"] if self.det is not None else []))

    def __len__(self) -> int:
        return (self.seg is not None) + len(self.seg_tasks) + (self.det is not None)


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Concatenate per-level maps ``[B, C, H_l, W_l]`` into ``[B, sum(H_l*W_l), C]`` (level-major)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
