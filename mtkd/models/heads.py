"""Task heads: YOLOv5-style anchor detection head, Ultralytics ``Detect`` (anchor-free, DFL) with explicit widths,
a small FPN-style semantic-segmentation head, and ``SegHeads`` (one such head per named seg task).

Every head returns **raw** outputs in train and eval mode alike (decoding lives in ``mtkd.models.postprocess``),
takes every hidden width explicitly and reports it back with ``widths()`` (read from the live modules, so pruned
widths are captured). The last convolutions (``AnchorHead.m``, ``AnchorFreeHead.cv2[i][-1]``/``cv3[i][-1]``,
``SegHead.cls``) have a fixed number of outputs and are listed by ``ignored_layers()`` for Torch-Pruning.
Adapters of other model families reuse these heads (e.g. ``SegHead`` on top of a foreign backbone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.blocks import conv_width
from mtkd.utils.env import quiet_ultralytics

with quiet_ultralytics():  # no settings banner when Ultralytics is first imported
    from ultralytics.nn.modules import Conv
    from ultralytics.nn.modules.head import Detect

#: YOLOv5 P3-P5 anchors (w, h pixels at 640) divided by 4, for objects of ~6-100 px in 128 px images.
DEFAULT_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((2.5, 3.25), (4.0, 7.5), (8.25, 5.75)),
    ((7.5, 15.25), (15.5, 11.25), (14.75, 29.75)),
    ((29.0, 22.5), (39.0, 49.5), (93.25, 81.5)),
)


class AnchorHead(nn.Module):
    """YOLOv5/YOLOP ``Detect`` head: one 1x1 conv per level, objectness + class logits per anchor.

    Args:
        nc: number of detection classes.
        ch: input channels of each level (P3, P4, P5, ...).
        anchors: ``[nl][na](w, h)`` anchor sizes in **input pixels**.
        strides: stride of each level in input pixels.

    ``forward(feats)``: list of ``[B, ch_l, H_l, W_l]`` -> list of ``[B, na, H_l, W_l, 5 + nc]`` raw values
    (``tx, ty, tw, th, obj, cls...``); decode with ``xy = (sig(t_xy) * 2 - 0.5 + grid) * stride``,
    ``wh = (sig(t_wh) * 2) ** 2 * anchor``.
    """

    kind = "anchor"

    def __init__(
        self,
        nc: int,
        ch: Sequence[int],
        *,
        anchors: Sequence[Sequence[Sequence[float]]] = DEFAULT_ANCHORS,
        strides: Sequence[int] = (8, 16, 32),
    ) -> None:
        super().__init__()
        anchors_t = torch.tensor(anchors, dtype=torch.float32)
        if anchors_t.ndim != 3 or anchors_t.shape[0] != len(ch) or anchors_t.shape[-1] != 2:
            raise ValueError(f"anchors must be [nl={len(ch)}][na][2], got shape {tuple(anchors_t.shape)}")
        if len(strides) != len(ch):
            raise ValueError(f"need one stride per level ({len(ch)}), got {list(strides)}")
        self.nc, self.nl, self.na = int(nc), len(ch), int(anchors_t.shape[1])
        self.no = self.nc + 5
        self.register_buffer("anchors", anchors_t)  # [nl, na, 2] pixels
        self.strides = tuple(int(s) for s in strides)
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in ch)
        self.bias_init()

    def bias_init(self, imgsz: int = 640) -> None:
        """YOLOv5 priors: ~8 objects per ``imgsz`` image for objectness, ~0.6 / nc for classes."""
        for conv, s in zip(self.m, self.strides):
            b = conv.bias.view(self.na, -1)
            with torch.no_grad():
                b[:, 4] = math.log(8 / (imgsz / s) ** 2)
                b[:, 5:] = math.log(0.6 / max(self.nc - 0.99, 0.01))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for conv, x in zip(self.m, feats):
            y = conv(x)
            b, _, h, w = y.shape
            out.append(y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return out

    def widths(self) -> dict[str, Any]:
        return {}

    def ignored_layers(self) -> list[nn.Module]:
        return list(self.m)


class AnchorFreeHead(Detect):
    """Ultralytics ``Detect`` (DFL boxes, no objectness) with explicit hidden widths, always returning raw outputs.

    ``cv2[i] = Conv3x3(ch_i -> box[i][0]), Conv3x3(-> box[i][1]), Conv2d1x1(-> 4 * reg_max)`` and
    ``cv3[i] = Conv3x3(ch_i -> cls[i][0]), Conv3x3(-> cls[i][1]), Conv2d1x1(-> nc)`` (the ``legacy`` YOLOv8
    layout; no depthwise convs). Default widths follow ``Detect``: ``max(16, ch[0] // 4, 4 * reg_max)`` for boxes
    and ``max(ch[0], min(nc, 100))`` for classes.

    ``forward(feats)`` returns ``Detect.forward_head``'s dict in train **and** eval mode:
    ``boxes [B, 4 * reg_max, A]``, ``scores [B, nc, A]``, ``feats`` (the input maps), ``A = sum(H_l * W_l)``.
    """

    kind = "anchor_free"

    def __init__(
        self,
        nc: int,
        ch: Sequence[int],
        *,
        reg_max: int = 16,
        strides: Sequence[int] = (8, 16, 32),
        box: Sequence[Sequence[int]] | None = None,
        cls: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(nc=nc, reg_max=reg_max, end2end=False, ch=tuple(ch))
        if len(strides) != len(ch):
            raise ValueError(f"need one stride per level ({len(ch)}), got {list(strides)}")
        c2, c3 = max(16, ch[0] // 4, reg_max * 4), max(ch[0], min(nc, 100))
        box = box or [[c2, c2] for _ in ch]
        cls = cls or [[c3, c3] for _ in ch]
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, a, 3), Conv(a, b, 3), nn.Conv2d(b, 4 * reg_max, 1))
            for x, (a, b) in zip(ch, box)
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, a, 3), Conv(a, b, 3), nn.Conv2d(b, nc, 1)) for x, (a, b) in zip(ch, cls)
        )
        self.stride = torch.tensor([float(s) for s in strides])
        self.strides_px = tuple(int(s) for s in strides)
        self.bias_init()

    def bias_init(self, box_decay: float = 0.5) -> None:
        """``Detect.bias_init`` (class priors), then a small-box prior on the DFL logits.

        Ultralytics sets every DFL logit to 2.0, i.e. an initial distance of ``(reg_max - 1) / 2`` cells per
        side (boxes of 15 cells: 120 px at P3), sized for 640 px inputs. On small inputs such boxes have almost
        no IoU with small objects, and the task-aligned assigner (weights ~ IoU^6) then gives those objects
        almost no gradient. Logits ``-box_decay * k`` for bin ``k`` start at ~1.5 cells per side instead
        (24 / 48 / 96 px boxes at P3 / P4 / P5).
        """
        super().bias_init()
        prior = -box_decay * torch.arange(self.reg_max, dtype=torch.float32)
        for seq in self.cv2:
            with torch.no_grad():
                seq[-1].bias.view(4, self.reg_max)[:] = prior

    def forward(self, feats: list[Tensor]) -> dict[str, Any]:  # type: ignore[override]
        return self.forward_head(list(feats), box_head=self.cv2, cls_head=self.cv3)

    def widths(self) -> dict[str, Any]:
        return {
            "box": [[conv_width(s[0]), conv_width(s[1])] for s in self.cv2],
            "cls": [[conv_width(s[0]), conv_width(s[1])] for s in self.cv3],
        }

    def ignored_layers(self) -> list[nn.Module]:
        return [s[-1] for s in self.cv2] + [s[-1] for s in self.cv3] + [self.dfl]


class SegHead(nn.Module):
    """Small FPN-style semantic head on P3 (+ upsampled P4), logits upsampled to the input size in ``forward``.

    ``lat = Conv1x1(P4 -> lat)``, upsampled x2 and concatenated with P3; ``fuse = Conv3x3(-> fuse)``,
    ``conv = Conv3x3(-> conv)``, ``cls = Conv2d1x1(-> nc)`` (the "seg classifier", ignored by pruning), then
    bilinear upsampling by ``upsample`` (8 for a P3 at stride 8).

    ``forward([p3, p4])``: ``[B, c3, H/8, W/8]``, ``[B, c4, H/16, W/16]`` -> logits ``[B, nc, H, W]``
    (``size=`` overrides the output size).
    """

    def __init__(
        self,
        nc: int,
        ch: Sequence[int],
        *,
        lat: int | None = None,
        fuse: int | None = None,
        conv: int | None = None,
    ) -> None:
        super().__init__()
        c3, c4 = int(ch[0]), int(ch[1])
        lat, fuse = lat or max(c3 // 2, 8), fuse or c3
        conv = conv or fuse
        self.nc = int(nc)
        self.lat = Conv(c4, lat, 1)
        self.fuse = Conv(c3 + lat, fuse, 3)
        self.conv = Conv(fuse, conv, 3)
        self.cls = nn.Conv2d(conv, nc, 1)

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int] | None = None) -> Tensor:
        return self.upsample(self.head_logits(feats), feats, size)

    def head_logits(self, feats: Sequence[Tensor]) -> Tensor:
        """The classifier's logits at P3's resolution, before upsampling: ``[B, nc, H/8, W/8]``."""
        p3, p4 = feats[0], feats[1]
        up = F.interpolate(self.lat(p4), size=p3.shape[-2:], mode="nearest")
        return self.cls(self.conv(self.fuse(torch.cat((p3, up), 1))))

    @staticmethod
    def upsample(y: Tensor, feats: Sequence[Tensor], size: tuple[int, int] | None = None) -> Tensor:
        """``head_logits`` ``[B, nc, h, w]`` -> ``[B, nc, H, W]`` (bilinear; ``size`` default 8x P3's)."""
        p3 = feats[0]
        size = size or (p3.shape[-2] * 8, p3.shape[-1] * 8)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    def with_head_logits(
        self, feats: Sequence[Tensor], size: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(forward(feats, size), head_logits(feats))`` from one pass (the module's forward hooks do not run)."""
        y = self.head_logits(feats)
        return self.upsample(y, feats, size), y

    def widths(self) -> dict[str, int]:
        return {"lat": conv_width(self.lat), "fuse": conv_width(self.fuse), "conv": conv_width(self.conv)}

    def ignored_layers(self) -> list[nn.Module]:
        return [self.cls]


class SegHeads(nn.ModuleDict):
    """One ``SegHead`` per named segmentation task, all on the same features (YOLOP: drivable area + lane lines).

    Args:
        tasks: ``{task: number of classes}``, in output order.
        ch: input channels ``(c3, c4)`` of ``[p3, p4]``.
        widths: optional ``{task: {"lat", "fuse", "conv"}}`` (``SegHead`` widths; a task left out uses defaults).

    Submodules are named by task (state_dict keys ``<prefix>.<task>.lat.conv.weight``, ...).
    ``forward([p3, p4], size)`` -> ``{task: logits [B, nc_task, H, W]}``.
    """

    def __init__(
        self,
        tasks: Mapping[str, int],
        ch: Sequence[int],
        *,
        widths: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        super().__init__()
        widths = dict(widths or {})
        unknown = [t for t in widths if t not in tasks]
        if unknown:
            raise ConfigError(f"seg head widths name unknown task {unknown[0]!r}; tasks: {list(tasks)}")
        for task, nc in tasks.items():
            if hasattr(self, task):  # a ModuleDict method name (e.g. "keys") cannot name a submodule
                raise ConfigError(
                    f"seg task name {task!r} clashes with a torch.nn.ModuleDict attribute; rename it"
                )
            w = dict(widths.get(task) or {})
            self[task] = SegHead(nc, ch, lat=w.get("lat"), fuse=w.get("fuse"), conv=w.get("conv"))

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int] | None = None) -> dict[str, Tensor]:
        return {task: head(feats, size=size) for task, head in self.items()}

    def head_logits(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        """``{task: head logits [B, nc_task, H/8, W/8]}``, before upsampling."""
        return {task: head.head_logits(feats) for task, head in self.items()}

    def with_head_logits(
        self, feats: Sequence[Tensor], size: tuple[int, int] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``({task: upsampled logits}, {task: head logits [B, nc, H/8, W/8]})`` from one pass."""
        pairs = {task: head.with_head_logits(feats, size) for task, head in self.items()}
        return {t: p[0] for t, p in pairs.items()}, {t: p[1] for t, p in pairs.items()}

    def widths(self) -> dict[str, dict[str, int]]:
        return {task: head.widths() for task, head in self.items()}

    def ignored_layers(self) -> list[nn.Module]:
        return [m for head in self.values() for m in head.ignored_layers()]
