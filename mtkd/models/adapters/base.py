"""The one interface every model adapter implements.

An adapter is an ``nn.Module`` whose ``forward(images, features=())`` returns a ``MultiTaskOutput``
(``seg`` logits ``[B, C_seg, H, W]`` and a ``DetOutput`` of **raw** head outputs, in train and eval mode alike;
decoding and NMS live in ``mtkd.models.postprocess``). ``arch()`` returns a description made only of
JSON-like values (dict/list/str/int/float/bool/None) from which ``mtkd.models.build_from_arch`` rebuilds the
same architecture, including pruned channel widths, so checkpoints never pickle modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mtkd.models.outputs import DetKind, MultiTaskOutput


@dataclass(frozen=True)
class DetSpec:
    """What must agree between a teacher's and a student's detection heads for logit distillation."""

    kind: DetKind
    num_classes: int
    strides: tuple[int, ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...] | None = None  # [nl][na](w, h) pixels, anchor heads
    reg_max: int | None = None  # DFL bins, anchor-free heads


class MultiTaskAdapter(nn.Module):
    """Base class. Subclasses set ``det_names``/``seg_names`` and implement ``forward``, ``arch``, ``det_spec``."""

    #: registry name of the adapter kind ("native", "ultralytics", "smp", "composite", "generic")
    adapter_name: str = "base"

    def __init__(self, *, det_names: Sequence[str] = (), seg_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.det_names = list(det_names)
        self.seg_names = list(seg_names)

    @property
    def nc_det(self) -> int:
        return len(self.det_names)

    @property
    def nc_seg(self) -> int:
        return len(self.seg_names)

    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:  # pragma: no cover
        """images: ``[B, 3, H, W]`` float in [0, 1], H and W multiples of 32."""
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
