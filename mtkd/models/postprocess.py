"""Decode raw head outputs into detections (NMS) and segmentation logits into class maps.

Works on the ``DetOutput.raw`` layouts documented in ``mtkd.models.outputs`` for both head kinds, so every
adapter that follows that contract is decoded the same way as the training loss sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from mtkd.models.outputs import DetOutput

MAX_NMS = 30000  # candidates per image entering NMS (YOLOv5/Ultralytics default)


def _grid(h: int, w: int, like: Tensor) -> Tensor:
    """``[h, w, 2]`` (x, y) cell indices."""
    ys = torch.arange(h, device=like.device, dtype=like.dtype)
    xs = torch.arange(w, device=like.device, dtype=like.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), -1)


def decode_anchor(raw: Sequence[Tensor], anchors: Tensor, strides: Sequence[int]) -> tuple[Tensor, Tensor]:
    """YOLOv5 decode. ``raw``: per level ``[B, na, H, W, 5 + nc]``; ``anchors``: ``[nl, na, 2]`` pixels.

    Returns ``boxes [B, A, 4]`` xyxy pixels and ``scores [B, A, nc]`` = sigmoid(obj) * sigmoid(cls).
    """
    boxes, scores = [], []
    for p, a, s in zip(raw, anchors.to(raw[0].device, raw[0].dtype), strides):
        b, na, h, w, _ = p.shape
        y = p.sigmoid()
        xy = (y[..., :2] * 2 - 0.5 + _grid(h, w, p)) * s
        wh = (y[..., 2:4] * 2) ** 2 * a.view(1, na, 1, 1, 2)
        boxes.append(torch.cat((xy - wh / 2, xy + wh / 2), -1).reshape(b, -1, 4))
        scores.append((y[..., 4:5] * y[..., 5:]).reshape(b, na * h * w, -1))
    return torch.cat(boxes, 1), torch.cat(scores, 1)


def decode_anchor_free(raw: dict, strides: Sequence[int], reg_max: int) -> tuple[Tensor, Tensor]:
    """Ultralytics DFL decode. ``raw``: ``boxes [B, 4*reg_max, A]``, ``scores [B, nc, A]``, ``feats``.

    Returns ``boxes [B, A, 4]`` xyxy pixels and ``scores [B, A, nc]`` = sigmoid(cls).
    """
    from ultralytics.utils.tal import dist2bbox, make_anchors

    dist, logits = raw["boxes"], raw["scores"]
    b, _, a = dist.shape
    if reg_max > 1:
        proj = torch.arange(reg_max, device=dist.device, dtype=dist.dtype)
        dist = (dist.view(b, 4, reg_max, a).softmax(2) * proj.view(1, 1, -1, 1)).sum(2)
    points, stride_t = make_anchors(raw["feats"], [float(s) for s in strides], 0.5)
    boxes = dist2bbox(dist, points.transpose(0, 1).unsqueeze(0), xywh=False, dim=1) * stride_t.transpose(0, 1)
    return boxes.transpose(1, 2), logits.sigmoid().transpose(1, 2)


def decode_det(det: DetOutput) -> tuple[Tensor, Tensor]:
    """``boxes [B, A, 4]`` xyxy pixels and per-class ``scores [B, A, nc]`` in [0, 1], for either head kind."""
    if det.kind == "anchor":
        if det.anchors is None:
            raise ValueError("anchor DetOutput without anchors")
        return decode_anchor(det.raw, det.anchors, det.strides)
    return decode_anchor_free(det.raw, det.strides, int(det.reg_max or 1))


@torch.no_grad()
def postprocess_det(
    det: DetOutput,
    img_hw: tuple[int, int],
    *,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    agnostic: bool = False,
    multi_label: bool = False,
) -> list[dict[str, Tensor]]:
    """Decode, threshold, NMS (``torchvision.ops.batched_nms``), clip to the image.

    Args:
        det: raw head output of a batch.
        img_hw: ``(H, W)`` of the network input (boxes are in its pixels).
        conf: minimum score (``obj * cls`` for anchor heads, ``cls`` for anchor-free heads).
        iou: NMS IoU threshold. max_det: detections kept per image.
        agnostic: NMS across classes. multi_label: one candidate per (box, class) above ``conf`` instead of
            only the best class of each box.

    Returns one dict per image: ``boxes [N, 4]`` float xyxy, ``scores [N]`` float, ``labels [N]`` int64,
    sorted by decreasing score.
    """
    boxes, scores = decode_det(det)
    h, w = int(img_hw[0]), int(img_hw[1])
    out = []
    for bx, sc in zip(boxes.float(), scores.float()):
        if multi_label:
            i, j = (sc > conf).nonzero(as_tuple=True)
            bx, s, lab = bx[i], sc[i, j], j
        else:
            s, lab = sc.max(1)
            keep = s > conf
            bx, s, lab = bx[keep], s[keep], lab[keep]
        if s.numel() > MAX_NMS:
            top = s.topk(MAX_NMS).indices
            bx, s, lab = bx[top], s[top], lab[top]
        bx = clip_boxes_to_image(bx, (h, w))
        keep = batched_nms(bx, s, torch.zeros_like(lab) if agnostic else lab, iou)[:max_det]
        out.append({"boxes": bx[keep], "scores": s[keep], "labels": lab[keep].long()})
    return out


@torch.no_grad()
def postprocess_seg(seg_logits: Tensor, img_hw: tuple[int, int]) -> Tensor:
    """``[B, C, h, w]`` logits -> ``int64 [B, H, W]`` class map (bilinear upsampling to ``img_hw`` if needed)."""
    if tuple(seg_logits.shape[-2:]) != (int(img_hw[0]), int(img_hw[1])):
        seg_logits = F.interpolate(seg_logits, size=tuple(img_hw), mode="bilinear", align_corners=False)
    return seg_logits.argmax(1).long()
