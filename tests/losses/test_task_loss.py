"""Task losses: hand-checked values, YOLOv5 target assignment, Ultralytics parity, empty targets, overfitting."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from mtkd_test_syncs import SyncingOps
from torchvision.ops import box_iou

from mtkd.losses.task import ANCHOR_FREE_GAINS, AnchorDetLoss, TaskLoss
from mtkd.models import build_model, postprocess_det
from mtkd.models.heads import DEFAULT_ANCHORS


class _SegOnly:
    nc_seg = 3

    def det_spec(self):
        return None


def test_seg_ce_hand_value():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # [1, 3, 1, 2]
    masks = torch.tensor([[[0, 255]]])  # second pixel ignored
    out = TaskLoss(_SegOnly()).seg(logits, masks)
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))  # only pixel 0, target class 0
    assert out["seg_ce"].item() == pytest.approx(expected, rel=1e-6)
    assert out["seg_loss"].item() == pytest.approx(expected, rel=1e-6)
    # all pixels ignored: zero, not NaN
    assert TaskLoss(_SegOnly()).seg(logits, torch.full((1, 1, 2), 255))["seg_ce"].item() == 0.0


def test_seg_dice_and_upsampling():
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)  # smaller than the mask: upsampled in the loss
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    out = TaskLoss(_SegOnly(), dice_weight=0.5).seg(logits, masks)
    assert out["seg_ce"].item() == pytest.approx(math.log(3), rel=1e-6)  # uniform over 3 classes
    assert out["seg_loss"].item() == pytest.approx(out["seg_ce"].item() + 0.5 * out["seg_dice"].item())
    out["seg_loss"].backward()
    assert logits.grad is not None


def test_anchor_target_assignment_by_hand():
    """Box (cx, cy) = (19, 21), 8x8 px at stride 8: grid (2.375, 2.625) -> own cell (2, 2), left neighbour
    (1, 2) (x fraction < 0.5) and lower neighbour (2, 3) (y fraction > 0.5); all 3 P3 anchors within ratio 4."""
    loss = AnchorDetLoss(3, (8, 16, 32), torch.tensor(DEFAULT_ANCHORS), box=1, obj=1, cls=1)
    raw = [torch.zeros(1, 3, 64 // s, 64 // s, 8) for s in (8, 16, 32)]
    *rows, keep = loss.build_targets(raw, torch.tensor([[0.0, 2, 19, 21, 8, 8]]))[0]
    assert keep.shape == (5 * 3 * 1,)  # every candidate: 5 cells x 3 anchors x 1 target
    b, a, gj, gi, tbox, anch, c = (x[keep] for x in rows)
    got = sorted(zip(a.tolist(), gj.tolist(), gi.tolist()))
    assert got == sorted((k, j, i) for k in range(3) for (j, i) in [(2, 2), (2, 1), (3, 2)])
    assert (c == 2).all() and (b == 0).all()
    own = (gj == 2) & (gi == 2)
    assert torch.allclose(tbox[own][0], torch.tensor([0.375, 0.625, 1.0, 1.0]))  # xy offset in cell, wh grid
    assert torch.allclose(anch, torch.tensor(DEFAULT_ANCHORS)[0][a] / 8)


def test_anchor_free_matches_ultralytics(batch_factory):
    """Our batch (xyxy pixels, any image order) converts to v8DetectionLoss' (normalized xywh) correctly."""
    from ultralytics.utils.loss import v8DetectionLoss

    torch.manual_seed(0)
    model = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head="anchor_free")
    batch = batch_factory()
    order = torch.tensor([2, 0, 1])  # shuffle targets: the loss must regroup them by image
    shuffled = {**batch, **{k: batch[k][order] for k in ("boxes", "labels", "batch_idx")}}
    out = model(batch["images"])
    ours = TaskLoss(model)(out, shuffled)

    det = SimpleNamespace(stride=torch.tensor([8.0, 16, 32]), nc=3, reg_max=16)
    shim = SimpleNamespace(
        args=SimpleNamespace(**ANCHOR_FREE_GAINS), model=[det], parameters=lambda: iter([det.stride])
    )
    bx = batch["boxes"]
    xywh = torch.cat(((bx[:, :2] + bx[:, 2:]) / 2, bx[:, 2:] - bx[:, :2]), 1) / 64
    ref_batch = {
        "batch_idx": batch["batch_idx"].float(),
        "cls": batch["labels"].float()[:, None],
        "bboxes": xywh,
    }
    ref, _ = v8DetectionLoss(shim)(out.det.raw, ref_batch)  # sum of (box, cls, dfl) * batch size
    assert torch.allclose(
        torch.stack([ours["det_box"], ours["det_cls"], ours["det_dfl"]]) * 2, ref, rtol=1e-5
    )
    assert ours["det_loss"].item() == pytest.approx(ref.sum().item() / 2, rel=1e-5)


@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
def test_empty_targets(head, batch_factory):
    model = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head=head)
    batch = batch_factory()
    batch.update(
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.long),
        batch_idx=torch.zeros(0, dtype=torch.long),
    )
    losses = TaskLoss(model)(model(batch["images"]), batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["det_box"].item() == 0.0 and losses["det_loss"].item() > 0  # no boxes: background only
    (losses["det_loss"] + losses["seg_loss"]).backward()


def overfit(head: str, batch: dict, lr: float, steps: int):
    torch.manual_seed(0)
    model = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head=head)
    loss_fn = TaskLoss(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = []
    for _ in range(steps):
        losses = loss_fn(model(batch["images"]), batch)
        opt.zero_grad()
        (losses["det_loss"] + losses["seg_loss"]).backward()
        opt.step()
        hist.append({k: v.item() for k, v in losses.items()})
    return model, hist


def check_recovered(model, batch) -> None:
    with torch.no_grad():  # train-mode BN: batch statistics, as during the fit
        dets = postprocess_det(model(batch["images"]).det, (64, 64), conf=0.25)
    for i, d in enumerate(dets):
        gt, gl = batch["boxes"][batch["batch_idx"] == i], batch["labels"][batch["batch_idx"] == i]
        assert len(d["boxes"]), f"image {i}: nothing detected"
        iou = box_iou(gt, d["boxes"])
        for g in range(len(gt)):
            hit = (iou[g] > 0.5) & (d["labels"] == gl[g])
            assert hit.any(), f"image {i}: box {gt[g].tolist()} class {gl[g].item()} not recovered"


def test_overfit_one_batch_anchor(batch_factory):
    """A few boxes and masks drawn in the test: every loss goes down and every box is recovered."""
    batch = batch_factory()
    model, hist = overfit("anchor", batch, lr=1e-2, steps=25)
    for k in ("seg_ce", "det_loss", "det_cls"):
        assert hist[-1][k] < 0.5 * hist[0][k], (k, hist[0][k], hist[-1][k])
    assert hist[-1]["det_box"] < 0.8 * hist[0]["det_box"]
    # objectness targets are the IoUs of the matched predictions: the loss rises while boxes improve, then falls
    assert hist[-1]["det_obj"] < 0.9 * max(h["det_obj"] for h in hist)
    check_recovered(model, batch)


def test_overfit_one_batch_anchor_free(batch_factory):
    """Task-aligned assignment makes the first steps' det loss rise (targets sharpen as IoUs grow), so the
    end of the fit is compared with the early peak."""
    batch = batch_factory()
    model, hist = overfit("anchor_free", batch, lr=5e-3, steps=25)
    assert hist[-1]["seg_ce"] < 0.5 * hist[0]["seg_ce"]
    for k in ("det_loss", "det_box", "det_cls", "det_dfl"):
        early, late = max(h[k] for h in hist[:10]), sum(h[k] for h in hist[-3:]) / 3
        assert late < 0.6 * early, (k, early, late)
    check_recovered(model, batch)


def _yolov5_reference(
    loss: AnchorDetLoss, raw: list[torch.Tensor], tgt: torch.Tensor
) -> dict[str, torch.Tensor]:
    """YOLOv5's ``ComputeLoss`` as mtkd computed it before (boolean indexing of the matches), the known values
    the sync-free ``AnchorDetLoss`` must give."""
    from ultralytics.utils.metrics import bbox_iou

    na, nt = loss.anchors.shape[1], tgt.shape[0]
    ai = torch.arange(na, dtype=tgt.dtype).view(na, 1).repeat(1, nt)
    tgt = torch.cat((tgt.repeat(na, 1, 1), ai[..., None]), 2)
    g = 0.5
    off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=tgt.dtype) * g
    lbox = lobj = lcls = raw[0].new_zeros(())
    for i, (p, bal) in enumerate(zip(raw, loss.balance)):
        h, w = p.shape[2:4]
        anchors = loss.anchors[i] / loss.strides[i]
        t = tgt.clone()
        t[..., 2:6] /= loss.strides[i]
        if nt:
            r = t[..., 4:6] / anchors[:, None]
            t = t[torch.max(r, 1 / r).max(2)[0] < loss.anchor_t]
            gxy = t[:, 2:4]
            gxi = torch.tensor([w, h], dtype=t.dtype) - gxy
            left, top = ((gxy % 1 < g) & (gxy > 1)).T
            right, bottom = ((gxi % 1 < g) & (gxi > 1)).T
            sel = torch.stack((torch.ones_like(left), left, top, right, bottom))
            t = t.repeat((5, 1, 1))[sel]
            offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
        else:
            t, offsets = tgt[0], 0
        b, c, a = t[:, 0].long(), t[:, 1].long(), t[:, 6].long()
        gxy, gwh = t[:, 2:4], t[:, 4:6]
        gij = (gxy - offsets).long()
        gi, gj = gij[:, 0].clamp_(0, w - 1), gij[:, 1].clamp_(0, h - 1)
        tobj = torch.zeros(p.shape[:4])
        if b.numel():
            ps = p[b, a, gj, gi]
            pxy = ps[:, :2].sigmoid() * 2 - 0.5
            pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors[a]
            tbox = torch.cat((gxy - gij, gwh), 1)
            iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox, xywh=True, CIoU=True).squeeze(-1)
            lbox = lbox + (1.0 - iou).mean()
            tobj[b, a, gj, gi] = iou.detach().clamp(0)
            if loss.nc > 1:
                tc = torch.zeros_like(ps[:, 5:])
                tc[torch.arange(b.numel()), c] = 1.0
                lcls = lcls + torch.nn.functional.binary_cross_entropy_with_logits(ps[:, 5:], tc)
        lobj = lobj + torch.nn.functional.binary_cross_entropy_with_logits(p[..., 4], tobj) * bal
    lbox, lobj, lcls = lbox * loss.gains["box"], lobj * loss.gains["obj"], lcls * loss.gains["cls"]
    return {"det_loss": lbox + lobj + lcls, "det_box": lbox, "det_obj": lobj, "det_cls": lcls}


@pytest.mark.parametrize("nt", [0, 1, 40])
def test_anchor_loss_equals_yolov5s_in_value_and_gradient(nt):
    """Masked sums over every candidate give YOLOv5's means over its matches, and the objectness targets of
    cells matched twice the same (last) IoU: values and gradients equal the boolean-indexing computation's."""
    g = torch.Generator().manual_seed(nt)
    loss = AnchorDetLoss(
        4, (8, 16, 32), torch.tensor(DEFAULT_ANCHORS), **{"box": 0.05, "obj": 1.0, "cls": 0.5}
    )
    raw = [torch.randn(3, 3, 128 // s, 128 // s, 9, generator=g).requires_grad_() for s in (8, 16, 32)]
    wh = torch.rand(nt, 2, generator=g) * 60 + 2  # small to large boxes: some anchors out of ratio
    cxy = torch.rand(nt, 2, generator=g) * 126 + 1
    cxy[: nt // 4] = cxy[: nt // 4].floor() + 0.5  # centres exactly on half cells
    tgt = torch.cat(
        (
            torch.randint(0, 3, (nt, 1), generator=g).float(),
            torch.randint(0, 4, (nt, 1), generator=g).float(),
            cxy,
            wh,
        ),
        1,
    )
    got, want = loss(raw, tgt), _yolov5_reference(loss, raw, tgt)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    ga = torch.autograd.grad(got["det_loss"], raw)
    gb = torch.autograd.grad(want["det_loss"], raw)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-9)


def test_anchor_loss_needs_no_host_sync():
    """No boolean indexing, ``nonzero``, ``.item()`` or other value-dependent shape in the anchor loss: on CUDA
    none of them stalls the step (the trainer's one host copy of the terms is the step's only sync)."""
    g = torch.Generator().manual_seed(0)
    loss = AnchorDetLoss(4, (8, 16, 32), torch.tensor(DEFAULT_ANCHORS), box=0.05, obj=1.0, cls=0.5)
    raw = [torch.randn(2, 3, 64 // s, 64 // s, 9, generator=g).requires_grad_() for s in (8, 16, 32)]
    tgt = torch.tensor([[0.0, 1, 20, 20, 10, 12], [1, 3, 40, 33, 30, 20]])
    with SyncingOps() as mode:
        loss(raw, tgt)["det_loss"].backward()
    assert mode.ops == []
    with SyncingOps() as mode:  # the detector catches what the loss used to do
        _yolov5_reference(loss, raw, tgt)
    assert "index" in mode.ops
