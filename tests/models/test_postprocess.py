"""Decoding hand-built raw outputs back to known boxes, NMS and clipping, seg class maps."""

from __future__ import annotations

import torch

from mtkd.models import DetOutput, postprocess_det, postprocess_seg
from mtkd.models.heads import DEFAULT_ANCHORS

STRIDES = (8, 16, 32)
NC = 3


def anchor_det(size: int = 64) -> tuple[DetOutput, list[torch.Tensor]]:
    raw = [torch.full((1, 3, size // s, size // s, 5 + NC), -10.0) for s in STRIDES]
    flat = torch.cat([r.flatten(1, 3) for r in raw], 1)
    det = DetOutput(
        raw=raw,
        box=flat[..., :4],
        obj=flat[..., 4],
        cls=flat[..., 5:],
        kind="anchor",
        strides=STRIDES,
        anchors=torch.tensor(DEFAULT_ANCHORS),
    )
    return det, raw


def test_anchor_decode_known_box():
    det, raw = anchor_det()
    # level 0, anchor 1 (4 x 7.5 px), cell (y=3, x=2): t = 0 -> xy = (0.5*2 - 0.5 + grid) * 8, wh = anchor
    raw[0][0, 1, 3, 2, :4] = 0.0
    raw[0][0, 1, 3, 2, 4] = 10.0
    raw[0][0, 1, 3, 2, 5 + 2] = 10.0
    (res,) = postprocess_det(det, (64, 64), conf=0.25)
    assert res["labels"].tolist() == [2]
    assert torch.allclose(res["boxes"], torch.tensor([[18.0, 24.25, 22.0, 31.75]]), atol=1e-4)
    sig10 = torch.sigmoid(torch.tensor(10.0))
    assert torch.allclose(res["scores"], sig10 * sig10)  # obj * cls


def af_det(size: int = 64, reg_max: int = 16) -> tuple[DetOutput, dict]:
    feats = [torch.zeros(1, 4 * reg_max + NC, size // s, size // s) for s in STRIDES]
    a = sum(f.shape[-1] * f.shape[-2] for f in feats)
    raw = {"boxes": torch.zeros(1, 4 * reg_max, a), "scores": torch.full((1, NC, a), -10.0), "feats": feats}
    det = DetOutput(
        raw=raw,
        box=raw["boxes"].transpose(1, 2),
        obj=None,
        cls=raw["scores"].transpose(1, 2),
        kind="anchor_free",
        strides=STRIDES,
        reg_max=reg_max,
    )
    return det, raw


def set_af(
    raw: dict, idx: int, ltrb: tuple[int, int, int, int], cls: int, logit: float = 10.0, reg_max: int = 16
):
    d = raw["boxes"].view(1, 4, reg_max, -1)
    d[0, :, :, idx] = -30.0
    for side, k in enumerate(ltrb):
        d[0, side, k, idx] = 30.0  # softmax ~ one-hot at bin k -> distance k (grid units)
    raw["scores"][0, cls, idx] = logit


def test_anchor_free_decode_known_box():
    det, raw = af_det()
    # level 0 (8 x 8 grid), position y=1, x=2 -> anchor point (2.5, 1.5); ltrb (2, 1, 3, 4) in cells of 8 px
    set_af(raw, 1 * 8 + 2, (2, 1, 3, 4), cls=1)
    (res,) = postprocess_det(det, (64, 64), conf=0.25)
    assert res["labels"].tolist() == [1]
    assert torch.allclose(res["boxes"], torch.tensor([[4.0, 4.0, 44.0, 44.0]]), atol=1e-3)
    # level 1 (stride 16) starts at index 64: position y=0, x=1 -> point (1.5, 0.5); ltrb (1, 0, 1, 2) -> px
    det, raw = af_det()
    set_af(raw, 64 + 1, (1, 0, 1, 2), cls=0)
    (res,) = postprocess_det(det, (64, 64), conf=0.25)
    assert torch.allclose(res["boxes"], torch.tensor([[8.0, 8.0, 40.0, 40.0]]), atol=1e-3)


def test_nms_drops_duplicate_keeps_other_class_and_clips():
    det, raw = af_det()
    set_af(raw, 1 * 8 + 2, (2, 1, 3, 4), cls=1, logit=10.0)  # (4, 4, 44, 44)
    set_af(
        raw, 1 * 8 + 3, (3, 1, 2, 4), cls=1, logit=5.0
    )  # same box from the neighbour position, lower score
    set_af(raw, 7 * 8 + 7, (1, 1, 3, 3), cls=0, logit=8.0)  # (52, 52, 84, 84) -> clipped to (52, 52, 64, 64)
    (res,) = postprocess_det(det, (64, 64), conf=0.25, iou=0.6)
    assert res["labels"].tolist() == [1, 0]  # sorted by score; the duplicate is gone
    assert torch.allclose(res["boxes"][1], torch.tensor([52.0, 52.0, 64.0, 64.0]), atol=1e-3)
    # the duplicate of another class survives class-aware NMS but not agnostic NMS
    raw["scores"][0, 2, 1 * 8 + 3] = 6.0
    raw["scores"][0, 1, 1 * 8 + 3] = -10.0
    assert len(postprocess_det(det, (64, 64), conf=0.25)[0]["boxes"]) == 3
    assert len(postprocess_det(det, (64, 64), conf=0.25, agnostic=True)[0]["boxes"]) == 2
    assert len(postprocess_det(det, (64, 64), conf=0.25, max_det=1)[0]["boxes"]) == 1


def test_multi_label_and_empty():
    det, raw = af_det()
    set_af(raw, 10, (1, 1, 1, 1), cls=0)
    raw["scores"][0, 2, 10] = 9.0
    assert len(postprocess_det(det, (64, 64), conf=0.25)[0]["boxes"]) == 1
    assert postprocess_det(det, (64, 64), conf=0.25, multi_label=True)[0]["labels"].tolist() == [0, 2]
    det, _ = af_det()
    (res,) = postprocess_det(det, (64, 64), conf=0.25)
    assert res["boxes"].shape == (0, 4) and res["scores"].shape == (0,) and res["labels"].dtype == torch.int64


def test_postprocess_seg():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 2, :2] = 5.0  # class 2 in the top half
    out = postprocess_seg(logits, (8, 8))
    assert out.shape == (2, 8, 8) and out.dtype == torch.int64
    assert (out[:, :3] == 2).all() and (out[:, 5:] == 0).all()
    assert torch.equal(postprocess_seg(logits, (4, 4)), logits.argmax(1))
