"""Connectors: map a student feature map to the teacher's channel count for feature distillation.

Connectors are trained with the student but live in the distillation loss (``DistillLoss`` /
``FeatureDistiller``), never in the student: saving the student never saves them, so exports stay clean.
"""

from __future__ import annotations

import torch
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
        if self.is_identity:
            return x
        conv, *bn = self.proj if isinstance(self.proj, nn.Sequential) else (self.proj,)
        y = conv1x1(x, conv)
        return bn[0](y) if bn else y

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}" + (" (identity)" if self.is_identity else "")


def conv1x1(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` for a 1x1 ``conv`` (stride 1, no groups): ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    On CPU it is computed as a batched matmul ``W [C_out, C_in] @ x_b [C_in, H*W]`` for each of the ``B`` images
    (``torch.bmm`` over ``W`` expanded, not copied, along the batch): the same products, but without the oneDNN
    layout reorders that dominate a convolution of small feature maps, nor the copies ``torch.matmul`` makes to
    fold a 2-D by 3-D product into one matrix product. Forward and backward of the three 1x1 convs of
    ``tools/benchmark.py``'s default config with their FitNet MSE, on the 2-core CPU, medians of three runs:
    convolution 4.2 ms, ``torch.matmul`` 3.7 ms, ``torch.bmm`` 2.7 ms (with the BatchNorms: 6.0, 5.5, 4.4 ms).
    Other devices use the convolution. Values agree with ``conv(x)`` to float rounding.
    """
    if x.device.type != "cpu" or x.dim() != 4:
        return conv(x)
    b, c_in, h, w = x.shape
    weight = conv.weight.flatten(1)  # [C_out, C_in]
    y = torch.bmm(weight.expand(b, *weight.shape), x.reshape(b, c_in, h * w)).view(b, -1, h, w)
    return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)
