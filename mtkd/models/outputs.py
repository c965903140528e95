"""Typed model outputs shared by every adapter, loss and evaluator (DESIGN.md §2).

``MultiTaskOutput`` holds the segmentation logits and a ``DetOutput``; it reads as attributes
(``out.seg``) and as a mapping (``out["seg"]``, ``out.get("det")``) so code written against plain dicts works.
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


@dataclass
class MultiTaskOutput(Mapping):
    """Output of every adapter.

    Attributes:
        seg: ``[B, C_seg, h, w]`` segmentation **logits** (never probabilities), or ``None`` for a det-only model.
        det: ``DetOutput`` or ``None`` for a seg-only model.
        features: named intermediate feature maps requested with ``model(x, features=[...])``,
            e.g. ``{"p3": [B, C3, H/8, W/8]}``; empty when none were requested.
    """

    seg: Tensor | None = None
    det: DetOutput | None = None
    features: dict[str, Tensor] = field(default_factory=dict)

    _KEYS = ("seg", "det")

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(k for k in self._KEYS if getattr(self, k) is not None)

    def __len__(self) -> int:
        return sum(getattr(self, k) is not None for k in self._KEYS)


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Concatenate per-level maps ``[B, C, H_l, W_l]`` into ``[B, sum(H_l*W_l), C]`` (level-major)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
