"""``yolo_mt``: the built-in multi-task family (shared CSP backbone + PAN neck, detection head, semantic head).

Topology (fixed; widths free)::

    backbone  stem(/2) down1(/4) csp1 down2(/8) csp2=b3 down3(/16) csp3=b4 down4(/32) csp4 sppf=b5
    neck      lat5(b5) -> up + b4 -> td4 ; lat4(td4) -> up + b3 -> p3 (/8)
              down3(p3) + lat4 -> p4 (/16) ; down4(p4) + lat5 -> p5 (/32)
    det       AnchorHead (YOLOv5, objectness) or AnchorFreeHead (Ultralytics Detect, DFL) on p3, p4, p5
    seg       SegHead on p3 + p4, logits upsampled to the input size inside ``forward``; with several seg tasks
              (``seg_tasks``) one SegHead per task on the same p3 + p4 (``SegHeads``)

Every convolution's output width lives in the architecture description (``arch()["layers"]``), read back from
the live modules, so a model pruned by Torch-Pruning is rebuilt exactly by ``build_from_arch(model.arch())``.
Blocks are split-free (``mtkd.models.blocks``), hence prunable. Scales ``n``/``s``/``m`` are depth/width
multipliers of YOLOv5's base (channels 64-1024, depths 3-6-9-3) with a channel cap, as in Ultralytics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.blocks import CSP, SPPF, conv_width
from mtkd.models.features import FeatureTaps
from mtkd.models.heads import DEFAULT_ANCHORS, AnchorFreeHead, AnchorHead, SegHead, SegHeads
from mtkd.models.outputs import HEAD_KINDS, DetOutput, MultiTaskOutput
from mtkd.utils.env import quiet_ultralytics

with quiet_ultralytics():  # no settings banner when Ultralytics is first imported
    from ultralytics.nn.modules import Conv

#: scale -> (depth multiple, width multiple, max channels)
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.125, 128),
    "s": (0.33, 0.25, 256),
    "m": (0.5, 0.375, 384),
}
BASE_CHANNELS = (64, 128, 256, 512, 1024)  # stem, /4, /8, /16, /32
BASE_DEPTHS = (3, 6, 9, 3, 3)  # csp1..csp4, neck blocks
STRIDES = (8, 16, 32)
FEATURE_TAPS = {
    "b3": "backbone.csp2",
    "b4": "backbone.csp3",
    "b5": "backbone.sppf",
    "p3": "neck.p3",
    "p4": "neck.p4",
    "p5": "neck.p5",
    "seg": "seg.conv",
}


def default_layers(scale: str) -> dict[str, Any]:
    """Widths of an unpruned ``yolo_mt_<scale>`` backbone and neck (heads use their own defaults)."""
    gd, gw, cap = SCALES[scale]
    c = [min(max(int(math.ceil(b * gw / 8) * 8), 8), cap) for b in BASE_CHANNELS]
    d = [max(round(n * gd), 1) for n in BASE_DEPTHS]
    backbone = {
        "stem": c[0],
        "down1": c[1],
        "csp1": CSP.default_widths(c[1], d[0]),
        "down2": c[2],
        "csp2": CSP.default_widths(c[2], d[1]),
        "down3": c[3],
        "csp3": CSP.default_widths(c[3], d[2]),
        "down4": c[4],
        "csp4": CSP.default_widths(c[4], d[3]),
        "sppf": {"cv1": c[4] // 2, "cv2": c[4], "k": 5},
    }
    neck = {
        "lat5": c[3],
        "td4": CSP.default_widths(c[3], d[4], shortcut=False),
        "lat4": c[2],
        "p3": CSP.default_widths(c[2], d[4], shortcut=False),
        "down3": c[2],
        "p4": CSP.default_widths(c[3], d[4], shortcut=False),
        "down4": c[3],
        "p5": CSP.default_widths(c[4], d[4], shortcut=False),
    }
    return {"backbone": backbone, "neck": neck, "det": {}, "seg": {}}


def _csp(c1: int, spec: dict[str, Any]) -> CSP:
    return CSP(
        c1,
        cv1=spec["cv1"],
        cv2=spec["cv2"],
        cv3=spec["cv3"],
        m=spec["m"],
        shortcut=spec.get("shortcut", True),
    )


class Backbone(nn.Module):
    """CSP-Darknet (YOLOv5): ``[B, 3, H, W]`` -> ``(b3 [B, ., H/8, W/8], b4 [/16], b5 [/32])``."""

    def __init__(self, L: dict[str, Any]) -> None:
        super().__init__()
        self.stem = Conv(3, L["stem"], 3, 2)
        self.down1 = Conv(L["stem"], L["down1"], 3, 2)
        self.csp1 = _csp(L["down1"], L["csp1"])
        self.down2 = Conv(L["csp1"]["cv3"], L["down2"], 3, 2)
        self.csp2 = _csp(L["down2"], L["csp2"])
        self.down3 = Conv(L["csp2"]["cv3"], L["down3"], 3, 2)
        self.csp3 = _csp(L["down3"], L["csp3"])
        self.down4 = Conv(L["csp3"]["cv3"], L["down4"], 3, 2)
        self.csp4 = _csp(L["down4"], L["csp4"])
        self.sppf = SPPF(
            L["csp4"]["cv3"], cv1=L["sppf"]["cv1"], cv2=L["sppf"]["cv2"], k=L["sppf"].get("k", 5)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b3 = self.csp2(self.down2(self.csp1(self.down1(self.stem(x)))))
        b4 = self.csp3(self.down3(b3))
        b5 = self.sppf(self.csp4(self.down4(b4)))
        return b3, b4, b5

    def out_channels(self) -> tuple[int, int, int]:
        return conv_width(self.csp2.cv3), conv_width(self.csp3.cv3), conv_width(self.sppf.cv2)

    def widths(self) -> dict[str, Any]:
        return {
            name: conv_width(m) if isinstance(m, Conv) else m.widths() for name, m in self.named_children()
        }


class Neck(nn.Module):
    """YOLOv5 PAN: ``(b3, b4, b5)`` -> ``(p3 [B, ., H/8, W/8], p4 [/16], p5 [/32])``."""

    def __init__(self, ch: Sequence[int], L: dict[str, Any]) -> None:
        super().__init__()
        c3, c4, c5 = ch
        self.lat5 = Conv(c5, L["lat5"], 1)
        self.td4 = _csp(L["lat5"] + c4, L["td4"])
        self.lat4 = Conv(L["td4"]["cv3"], L["lat4"], 1)
        self.p3 = _csp(L["lat4"] + c3, L["p3"])
        self.down3 = Conv(L["p3"]["cv3"], L["down3"], 3, 2)
        self.p4 = _csp(L["down3"] + L["lat4"], L["p4"])
        self.down4 = Conv(L["p4"]["cv3"], L["down4"], 3, 2)
        self.p5 = _csp(L["down4"] + L["lat5"], L["p5"])

    @staticmethod
    def _up(x: Tensor, ref: Tensor) -> Tensor:
        return F.interpolate(x, size=ref.shape[-2:], mode="nearest")

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        b3, b4, b5 = feats
        l5 = self.lat5(b5)
        l4 = self.lat4(self.td4(torch.cat((self._up(l5, b4), b4), 1)))
        p3 = self.p3(torch.cat((self._up(l4, b3), b3), 1))
        p4 = self.p4(torch.cat((self.down3(p3), l4), 1))
        p5 = self.p5(torch.cat((self.down4(p4), l5), 1))
        return p3, p4, p5

    def out_channels(self) -> tuple[int, int, int]:
        return conv_width(self.p3.cv3), conv_width(self.p4.cv3), conv_width(self.p5.cv3)

    def widths(self) -> dict[str, Any]:
        return {
            name: conv_width(m) if isinstance(m, Conv) else m.widths() for name, m in self.named_children()
        }


class YoloMT(MultiTaskAdapter):
    """The built-in multi-task model, directly behind the ``MultiTaskAdapter`` interface (adapter ``"native"``).

    Args:
        layers: widths (see ``default_layers``); ``layers["det"]``/``layers["seg"]`` are the head widths
            (``{}`` = head defaults); with ``seg_tasks``, ``layers["seg"]`` is ``{task: seg head widths}``.
        head: ``"anchor"`` or ``"anchor_free"``.
        det_names, seg_names: class names (their lengths are ``nc_det``/``nc_seg``).
        seg_tasks: instead of ``seg_names``, several named seg tasks ``{task: class names}``: one ``SegHead`` per
            task (``self.seg`` is then a ``SegHeads``, state_dict keys ``seg.<task>.*``; single-task keys stay
            ``seg.*``).
        anchors: ``[3][na](w, h)`` pixels (anchor head); default ``DEFAULT_ANCHORS``.
        reg_max: DFL bins (anchor-free head).
        scale: informational (``"n"``/``"s"``/``"m"``), kept in ``arch()``.

    ``forward(images [B, 3, H, W], features=())`` -> ``MultiTaskOutput`` with ``seg`` logits ``[B, nc_seg, H, W]``
    (upsampled to the input size in the forward pass; with ``seg_tasks``: ``seg_tasks`` ``{task: [B, nc_task, H, W]}``)
    and a raw ``DetOutput`` in train and eval mode. Feature taps: ``FEATURE_TAPS`` (``seg`` becomes ``seg_<task>``
    per task).
    H and W should be multiples of 32.
    """

    adapter_name = "native"
    adapter_label = "native adapter"
    supports_seg_head_resolution = True

    def __init__(
        self,
        *,
        layers: dict[str, Any],
        head: str,
        det_names: Sequence[str],
        seg_names: Sequence[str] = (),
        seg_tasks: dict[str, Sequence[str]] | None = None,
        anchors: Sequence[Sequence[Sequence[float]]] | None = None,
        reg_max: int = 16,
        scale: str | None = None,
    ) -> None:
        super().__init__(det_names=det_names, seg_names=seg_names, seg_tasks=seg_tasks)
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {head!r}")
        self.head_kind, self.scale = head, scale
        self.backbone = Backbone(layers["backbone"])
        self.neck = Neck(self.backbone.out_channels(), layers["neck"])
        ch = self.neck.out_channels()
        det_w, seg_w = layers.get("det") or {}, layers.get("seg") or {}
        if head == "anchor":
            self.det: nn.Module = AnchorHead(
                self.nc_det, ch, anchors=anchors or DEFAULT_ANCHORS, strides=STRIDES
            )
        else:
            self.det = AnchorFreeHead(
                self.nc_det, ch, reg_max=reg_max, strides=STRIDES, box=det_w.get("box"), cls=det_w.get("cls")
            )
        if self.multi_seg:
            tasks = {t: len(names) for t, names in self.seg_tasks.items()}
            self.seg: nn.Module = SegHeads(tasks, ch[:2], widths=seg_w)
        else:
            self.seg = SegHead(
                self.nc_seg, ch[:2], lat=seg_w.get("lat"), fuse=seg_w.get("fuse"), conv=seg_w.get("conv")
            )

    # -- MultiTaskAdapter ------------------------------------------------------------------------------------
    def forward(
        self, images: Tensor, features: Sequence[str] = (), *, seg_upsample: bool = True
    ) -> MultiTaskOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        with FeatureTaps(self, self._feature_taps()).capture(features) as feats:
            p3, p4, p5 = self.neck(self.backbone(images))
            raw = self.det([p3, p4, p5])
            if seg_upsample:
                seg, low = self.seg.with_head_logits([p3, p4], size=tuple(images.shape[-2:]))
            else:  # supports_seg_head_resolution: the head's logits are the seg outputs
                seg = low = self.seg.head_logits([p3, p4])
        if isinstance(seg, dict):  # SegHeads: {task: logits}
            return MultiTaskOutput(
                seg_tasks=seg, det=self._det_output(raw), features=feats, seg_head_logits=low
            )
        return MultiTaskOutput(
            seg=seg, det=self._det_output(raw), features=feats, seg_head_logits={"seg": low}
        )

    def _feature_taps(self) -> dict[str, str]:
        """``FEATURE_TAPS``; with several seg tasks ``seg`` is replaced by ``seg_<task>`` -> ``seg.<task>.conv``."""
        if not self.multi_seg:
            return FEATURE_TAPS
        taps = {k: v for k, v in FEATURE_TAPS.items() if k != "seg"}
        return taps | {f"seg_{t}": f"seg.{t}.conv" for t in self.seg_tasks}

    def _det_output(self, raw: Any) -> DetOutput:
        if self.head_kind == "anchor":
            return DetOutput.from_anchor_levels(raw, strides=STRIDES, anchors=self.det.anchors)
        return DetOutput.from_anchor_free(raw, strides=STRIDES, reg_max=self.det.reg_max)

    def det_spec(self) -> DetSpec:
        if self.head_kind == "anchor":
            anchors = tuple(tuple((float(w), float(h)) for w, h in lvl) for lvl in self.det.anchors.tolist())
            return DetSpec(kind="anchor", num_classes=self.nc_det, strides=STRIDES, anchors=anchors)
        return DetSpec(
            kind="anchor_free", num_classes=self.nc_det, strides=STRIDES, reg_max=int(self.det.reg_max)
        )

    def feature_names(self) -> list[str]:
        return list(self._feature_taps())

    def arch(self) -> dict[str, Any]:
        """JSON-like description (``native.ARCH_KEYS``); a multi-task model has ``seg_tasks`` (``{task: names}``)
        instead of ``seg_names`` and ``layers["seg"]`` per task."""
        spec = self.det_spec()
        seg_key, seg_val = (
            ("seg_tasks", self.seg_tasks) if self.multi_seg else ("seg_names", list(self.seg_names))
        )
        return {
            "adapter": self.adapter_name,
            "family": "yolo_mt",
            "scale": self.scale,
            "head": self.head_kind,
            "det_names": list(self.det_names),
            seg_key: seg_val,
            "strides": list(STRIDES),
            "anchors": [[list(a) for a in lvl] for lvl in spec.anchors] if spec.anchors else None,
            "reg_max": spec.reg_max,
            "layers": {
                "backbone": self.backbone.widths(),
                "neck": self.neck.widths(),
                "det": self.det.widths(),
                "seg": self.seg.widths(),
            },
        }

    def ignored_layers(self) -> list[nn.Module]:
        """Modules Torch-Pruning must not prune: det output convs (+ DFL) and the seg classifier(s)."""
        return self.det.ignored_layers() + self.seg.ignored_layers()


def prune_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Modules whose output channels Torch-Pruning must keep (class/box outputs, seg classifier).

    Works for ``YoloMT`` and for any adapter that defines ``ignored_layers()``; otherwise every ``AnchorHead``,
    ``AnchorFreeHead`` and ``SegHead`` found inside the model (every task's) contributes its output layers.
    """
    if not hasattr(model, "ignored_layers"):
        model = getattr(model, "module", model)  # DDP-wrapped
    if hasattr(model, "ignored_layers"):
        return list(model.ignored_layers())
    out: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, (AnchorHead, AnchorFreeHead, SegHead)):
            out += m.ignored_layers()
    return out


def prune_output_transform(out: MultiTaskOutput) -> list[Tensor]:
    """Torch-Pruning ``output_transform``: the tensors of a ``MultiTaskOutput`` (it cannot flatten the dataclass)."""
    tensors = list(out.seg_outputs.values())
    if out.det is not None:
        tensors += [t for t in (out.det.box, out.det.obj, out.det.cls) if t is not None]
    return tensors
