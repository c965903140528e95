"""Split-free building blocks with an explicit width for every convolution.

Ultralytics' ``C3``/``Bottleneck``/``SPPF`` derive their hidden widths from ``e``/``c1 // 2``, so a pruned block
(whose convolutions lost different numbers of channels) cannot be rebuilt from their constructors. These thin
classes are made of Ultralytics ``Conv`` (conv + BN + SiLU) and take every output width explicitly; ``widths()``
reads them back from the live modules (after Torch-Pruning changed ``conv.out_channels``) in the same shape the
constructor accepts, so ``Block(c1, **block.widths())`` rebuilds the block. None of them splits channels with
``chunk``/``split`` (that breaks Torch-Pruning's dependency graph); they only concatenate and add.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtkd.utils.env import quiet_ultralytics

with quiet_ultralytics():  # no settings banner when Ultralytics is first imported
    from ultralytics.nn.modules import Conv


def conv_width(m: Conv) -> int:
    """Output channels of an Ultralytics ``Conv`` as they are now (pruning updates ``conv.out_channels``)."""
    return int(m.conv.out_channels)


class Bottleneck(nn.Module):
    """YOLOv5 ``C3`` bottleneck: ``Conv 1x1 (c1 -> cv1) -> Conv 3x3 (cv1 -> cv2)``, residual when ``add``.

    ``[B, c1, H, W] -> [B, cv2, H, W]``. ``add`` defaults to ``shortcut and c1 == cv2`` and is recorded in
    ``widths()``, so a rebuilt block keeps (or lacks) its residual whatever the widths became after pruning.
    """

    def __init__(
        self, c1: int, *, cv1: int, cv2: int, shortcut: bool = True, add: bool | None = None
    ) -> None:
        super().__init__()
        self.cv1 = Conv(c1, cv1, 1, 1)
        self.cv2 = Conv(cv1, cv2, 3, 1)
        self.add = bool(shortcut and c1 == cv2) if add is None else bool(add)
        if self.add and c1 != cv2:
            raise ValueError(f"Bottleneck residual needs c1 == cv2, got {c1} and {cv2}")

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y

    def widths(self) -> dict[str, Any]:
        return {"cv1": conv_width(self.cv1), "cv2": conv_width(self.cv2), "add": self.add}


class CSP(nn.Module):
    """YOLOv5 ``C3`` (CSP bottleneck with 3 convolutions), every width explicit, split-free.

    ``cv3(cat(m(cv1(x)), cv2(x)))``: ``[B, c1, H, W] -> [B, cv3, H, W]``.

    Args:
        c1: input channels.
        cv1, cv2: widths of the two 1x1 branch convolutions.
        cv3: output width.
        m: one ``{"cv1": hidden, "cv2": out[, "add": bool]}`` dict per bottleneck (its length is the depth).
        shortcut: residual connections inside the bottlenecks.
    """

    def __init__(
        self, c1: int, *, cv1: int, cv2: int, cv3: int, m: Sequence[dict[str, int]], shortcut: bool = True
    ) -> None:
        super().__init__()
        self.cv1 = Conv(c1, cv1, 1, 1)
        self.cv2 = Conv(c1, cv2, 1, 1)
        blocks, c = [], cv1
        for spec in m:
            blocks.append(
                Bottleneck(
                    c, cv1=int(spec["cv1"]), cv2=int(spec["cv2"]), shortcut=shortcut, add=spec.get("add")
                )
            )
            c = int(spec["cv2"])
        self.m = nn.Sequential(*blocks)
        self.cv3 = Conv(c + cv2, cv3, 1, 1)
        self.shortcut = bool(shortcut)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))

    def widths(self) -> dict[str, Any]:
        return {
            "cv1": conv_width(self.cv1),
            "cv2": conv_width(self.cv2),
            "cv3": conv_width(self.cv3),
            "m": [b.widths() for b in self.m],
            "shortcut": self.shortcut,
        }

    @staticmethod
    def default_widths(c2: int, n: int, *, e: float = 0.5, shortcut: bool = True) -> dict[str, Any]:
        """Widths of an unpruned ``C3(c1, c2, n, shortcut, e=e)``."""
        c_ = max(int(c2 * e), 1)
        return {
            "cv1": c_,
            "cv2": c_,
            "cv3": c2,
            "m": [{"cv1": c_, "cv2": c_} for _ in range(n)],
            "shortcut": shortcut,
        }


class SPPF(nn.Module):
    """Spatial pyramid pooling - fast (YOLOv5/v8 ``SPPF``) with an explicit hidden width.

    ``cv2(cat(y, mp(y), mp(mp(y)), mp(mp(mp(y)))))`` with ``y = cv1(x)``: ``[B, c1, H, W] -> [B, cv2, H, W]``.
    """

    def __init__(self, c1: int, *, cv1: int, cv2: int, k: int = 5) -> None:
        super().__init__()
        self.cv1 = Conv(c1, cv1, 1, 1)
        self.cv2 = Conv(cv1 * 4, cv2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.k = int(k)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))

    def widths(self) -> dict[str, int]:
        return {"cv1": conv_width(self.cv1), "cv2": conv_width(self.cv2), "k": self.k}
