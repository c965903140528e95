"""Decode raw head outputs into detections (NMS) and segmentation logits into class maps.

Works on the ``DetOutput.raw`` layouts documented in ``mtkd.models.outputs`` for both head kinds, so every
adapter that follows that contract is decoded the same way as the training loss sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image, nms

from mtkd.models.outputs import DetOutput

MAX_NMS = 30000  # candidates per image entering NMS (YOLOv5/Ultralytics default)
NMS_CHUNK = 16384  # candidates per torchvision nms call in nms_batched (its memory grows with their square)


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


@dataclass(frozen=True)
class Detections:
    """The detections of a batch of ``B`` images as flat tensors on the model's device.

    Attributes:
        boxes: ``[N, 4]`` float xyxy input pixels.
        scores: ``[N]`` float.
        labels: ``[N]`` int64.
        batch_idx: ``[N]`` int64, the image of each row; rows are grouped by image (ascending) and sorted by
            decreasing score within an image.
        batch_size: ``B``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    batch_idx: Tensor
    batch_size: int

    def split(self) -> list[dict[str, Tensor]]:
        """One dict per image (``boxes [n_i, 4]``, ``scores [n_i]``, ``labels [n_i]``; views of the flat
        tensors). Reads the ``B`` row counts from the device: one host sync."""
        counts = torch.bincount(self.batch_idx, minlength=self.batch_size).tolist()
        parts = (t.split(counts) for t in (self.boxes, self.scores, self.labels))
        return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(*parts)]


def _candidates(scores: Tensor, conf: float, multi_label: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidates above ``conf`` of ``scores [B, A, nc]``: ``(batch_idx, anchor_idx, score, label)``, each
    ``[K]``, in image, then anchor (then class, ``multi_label``) order; at most ``MAX_NMS`` per image (the
    top scores of an image with more, as ``Tensor.topk`` orders them)."""
    if multi_label:
        bi, ai, lab = (scores > conf).nonzero(as_tuple=True)
        s = scores[bi, ai, lab]
    else:
        best, best_lab = scores.max(2)
        bi, ai = (best > conf).nonzero(as_tuple=True)
        s, lab = best[bi, ai], best_lab[bi, ai]
    if len(s) > MAX_NMS:  # only then can an image have more than MAX_NMS: per image, as postprocess_det did
        counts = torch.bincount(bi, minlength=scores.shape[0]).tolist()
        if max(counts) > MAX_NMS:
            rows, start = [], 0
            for n in counts:
                idx = torch.arange(start, start + n, device=s.device)
                rows.append(idx[s[start : start + n].topk(MAX_NMS).indices] if n > MAX_NMS else idx)
                start += n
            sel = torch.cat(rows)
            bi, ai, s, lab = bi[sel], ai[sel], s[sel], lab[sel]
    return bi, ai, s, lab


def nms_per_image(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    batch_idx: Tensor,
    batch_size: int,
    iou: float,
    max_det: int,
) -> Tensor:
    """NMS of a batch as ``postprocess_det`` always did it: one ``torchvision.ops.batched_nms`` call per image.

    Args:
        boxes: ``[K, 4]`` xyxy candidates of all images, grouped by image (``batch_idx`` ascending).
        scores: ``[K]``. groups: ``[K]`` int64 NMS group within an image (class, or 0 when class-agnostic).
        batch_idx: ``[K]`` int64 image of each candidate. batch_size: ``B``.
        iou: IoU threshold. max_det: boxes kept per image.

    Returns:
        int64 ``[N]`` indices of the kept rows, by image, then decreasing score within an image.
    """
    counts = torch.bincount(batch_idx, minlength=batch_size).tolist()
    keep, start = [], 0
    for n in counts:
        sl = slice(start, start + n)
        keep.append(batched_nms(boxes[sl], scores[sl], groups[sl], iou)[:max_det] + start)
        start += n
    return torch.cat(keep) if keep else batch_idx.new_zeros(0)


def nms_batched(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    batch_idx: Tensor,
    batch_size: int,
    iou: float,
    max_det: int,
) -> Tensor:
    """``nms_per_image`` (same arguments and result) with one ``torchvision.ops.nms`` call per run of
    consecutive images holding at most ``NMS_CHUNK`` candidates (its memory grows with their square), instead
    of one per image: on CUDA each call waits for the device.

    ``batched_nms``' coordinate trick, in float64: the boxes of each (image, group) are moved apart by an offset;
    float64 holds the offset float32 coordinates exactly (in float32, the offsets of many images would round them
    to a fraction of a pixel). So each IoU is that of the original boxes, evaluated in float64: a decision can
    differ from ``nms_per_image`` (float32) only for an IoU within float32 rounding of ``iou``.
    """
    if boxes.numel() == 0:
        return batch_idx.new_zeros(0)
    counts = torch.bincount(batch_idx, minlength=batch_size).tolist()
    g = (batch_idx * (groups.max() + 1) + groups).double()  # a distinct id per (image, group)
    b64 = boxes.double()
    b64 = b64 + (g * (b64.max() + 1))[:, None]
    s64 = scores.double()
    keep, first, n_run, end = [], 0, 0, 0
    for n in [*counts, None]:  # None: flush the last run
        if n_run and (n is None or n_run + n > NMS_CHUNK):
            keep.append(nms(b64[first:end], s64[first:end], iou) + first)  # decreasing score
            first, n_run = end, 0
        if n is not None:
            n_run, end = n_run + n, end + n
    kept = torch.cat(keep)
    kept = kept[torch.sort(batch_idx[kept], stable=True).indices]  # by image, decreasing score within
    img = batch_idx[kept]
    per_image = torch.bincount(img, minlength=batch_size)
    rank = torch.arange(len(kept), device=kept.device) - (torch.cumsum(per_image, 0) - per_image)[img]
    return kept[rank < max_det]


@torch.no_grad()
def postprocess_det_batched(
    det: DetOutput,
    img_hw: tuple[int, int],
    *,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    agnostic: bool = False,
    multi_label: bool = False,
) -> Detections:
    """``postprocess_det`` of a whole batch on its device, flat (``Detections``): decode, threshold, at most
    ``MAX_NMS`` candidates per image, clip, NMS (``nms_batched`` on CUDA, else ``nms_per_image``: exactly the
    per-image ``batched_nms`` of earlier versions). No host transfer besides the candidate count (and NMS's)."""
    boxes, scores = decode_det(det)
    boxes, scores = boxes.float(), scores.float()
    bsz, h, w = scores.shape[0], int(img_hw[0]), int(img_hw[1])
    bi, ai, s, lab = _candidates(scores, conf, multi_label)
    bx = clip_boxes_to_image(boxes[bi, ai], (h, w))
    groups = torch.zeros_like(lab) if agnostic else lab
    run = nms_batched if bx.device.type == "cuda" else nms_per_image
    keep = run(bx, s, groups, bi, bsz, iou, max_det)
    return Detections(bx[keep], s[keep], lab[keep].long(), bi[keep], bsz)


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
    sorted by decreasing score (views of one ``postprocess_det_batched`` result, on its device).
    """
    kw = {"conf": conf, "iou": iou, "max_det": max_det, "agnostic": agnostic, "multi_label": multi_label}
    return postprocess_det_batched(det, img_hw, **kw).split()


def class_map(logits: Tensor) -> Tensor:
    """``[B, C, H, W]`` logits → ``int64 [B, H, W]`` class ids: ``argmax`` over ``C`` (the first maximal
    index; NaN counts as maximal), computed as ``max(1).indices``, which is the same and on CPU several times
    faster than ``argmax`` over a non-innermost dimension."""
    return logits.max(1).indices


@torch.no_grad()
def postprocess_seg(seg_logits: Tensor, img_hw: tuple[int, int]) -> Tensor:
    """``[B, C, h, w]`` logits -> ``int64 [B, H, W]`` class map (bilinear upsampling to ``img_hw`` if needed)."""
    if tuple(seg_logits.shape[-2:]) != (int(img_hw[0]), int(img_hw[1])):
        seg_logits = F.interpolate(seg_logits, size=tuple(img_hw), mode="bilinear", align_corners=False)
    return class_map(seg_logits)
