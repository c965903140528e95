"""Tiny third-party-style models for the generic adapter tests (importable as ``mtkd_adapter_toys:<Class>``).

``YoloPLike`` copies YOLOP's output contract (hustvl/YOLOP ``lib/models/YOLOP.py`` + ``common.Detect``): it
returns ``[det, drivable, lane]`` where ``det`` is, in train mode, a list of per-level raw maps
``[B, na, H, W, 5 + nc]`` and, in eval mode, ``(decoded [B, A, 5 + nc], that list)``; the two seg heads end in a
sigmoid (2 channels each), i.e. they emit probabilities.

``AnchorFreeToy`` returns a dict ``{"det": [per-level [B, 4*reg_max + nc, H, W]], "seg": softmax probs}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

YOLOP_ANCHORS = [[3, 9, 5, 11, 4, 20], [7, 18, 6, 39, 12, 31], [19, 50, 38, 81, 68, 157]]  # YOLOP's, pixels
STRIDES = [8, 16, 32]


def _down(c1: int, c2: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class Backbone(nn.Module):
    """``[B, 3, H, W]`` -> P3 ``[B, 2w, H/8, W/8]``, P4 ``[B, 4w, H/16, W/16]``, P5 ``[B, 8w, H/32, W/32]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_down(3, w), _down(w, w), _down(w, 2 * w))
        self.p4 = _down(2 * w, 4 * w)
        self.p5 = _down(4 * w, 8 * w)

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.stem(x)
        p4 = self.p4(p3)
        return [p3, p4, self.p5(p4)]


class YoloPLike(nn.Module):
    """YOLOP-shaped multi-task model: anchor det head (3 anchors, 3 levels) + two 2-channel sigmoid seg heads."""

    def __init__(self, nc: int = 1, width: int = 8, na: int = 3) -> None:
        super().__init__()
        self.nc, self.na, self.no = nc, na, nc + 5
        self.backbone = Backbone(width)
        self.det = nn.ModuleList(nn.Conv2d(c, na * self.no, 1) for c in (2 * width, 4 * width, 8 * width))
        self.drive = nn.Sequential(
            nn.Conv2d(2 * width, 2, 3, 1, 1), nn.Upsample(scale_factor=8), nn.Sigmoid()
        )
        self.lane = nn.Sequential(nn.Conv2d(2 * width, 2, 3, 1, 1), nn.Upsample(scale_factor=8), nn.Sigmoid())

    def forward(self, x: Tensor) -> list:
        feats = self.backbone(x)
        raw = []
        for conv, f in zip(self.det, feats):
            y = conv(f)
            b, _, h, w = y.shape
            raw.append(y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
        det = (
            raw
            if self.training
            else (torch.cat([r.sigmoid().view(r.shape[0], -1, self.no) for r in raw], 1), raw)
        )
        return [det, self.drive(feats[0]), self.lane(feats[0])]


class AnchorFreeToy(nn.Module):
    """Ultralytics-style anchor-free maps ``[B, 4*reg_max + nc, H, W]`` per level + softmax seg at stride 8."""

    def __init__(self, nc: int = 2, nc_seg: int = 3, reg_max: int = 4, width: int = 8) -> None:
        super().__init__()
        self.backbone = Backbone(width)
        self.head = nn.ModuleList(
            nn.Conv2d(c, 4 * reg_max + nc, 1) for c in (2 * width, 4 * width, 8 * width)
        )
        self.seg = nn.Conv2d(2 * width, nc_seg, 1)

    def forward(self, x: Tensor) -> dict:
        feats = self.backbone(x)
        return {"det": [m(f) for m, f in zip(self.head, feats)], "seg": F.softmax(self.seg(feats[0]), dim=1)}
