"""Connectors: map a student feature map to the teacher's channel count for feature distillation.

Connectors are trained with the student but live in the distillation loss (``DistillLoss`` /
``FeatureDistiller``), never in the student: saving the student never saves them, so exports stay clean.
"""

from __future__ import annotations

from torch import Tensor, nn


class Connector(nn.Module):
    """``1x1 conv (+ BatchNorm)`` from ``in_channels`` to ``out_channels``; identity when they are equal.

    Args:
        in_channels: student channels ``C_s``.
        out_channels: teacher channels ``C_t``.
        bn: add a ``BatchNorm2d`` after the conv (FitNet/CWD practice; stabilizes the hint's scale).

    Shapes: ``[B, C_s, H, W] -> [B, C_t, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, bn: bool = True) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        if self.in_channels == self.out_channels:
            self.proj: nn.Module = nn.Identity()
        else:
            conv = nn.Conv2d(self.in_channels, self.out_channels, kernel_size=1, bias=not bn)
            self.proj = nn.Sequential(conv, nn.BatchNorm2d(self.out_channels)) if bn else conv

    @property
    def is_identity(self) -> bool:
        return isinstance(self.proj, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}" + (" (identity)" if self.is_identity else "")
