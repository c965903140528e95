"""Task losses of a multi-task model: detection (anchor or anchor-free head) + semantic segmentation.

``TaskLoss(model)(out, batch)`` needs only ``model.det_spec()``, ``model.nc_seg`` and the ``MultiTaskOutput``,
so it works for every adapter. Batch contract (DESIGN.md §2): ``images [B,3,H,W]``, ``masks long [B,H,W]``
(``ignore_index`` = unlabeled), ``boxes [N,4]`` xyxy pixels, ``labels [N]``, ``batch_idx [N]``.

- anchor head: YOLOv5 ``ComputeLoss`` (target assignment by anchor ratio < ``anchor_t`` on the target's cell and
  its two nearest neighbour cells; CIoU box loss; BCE objectness with IoU targets and level balance; BCE class).
- anchor-free head: Ultralytics ``v8DetectionLoss`` (task-aligned assigner, CIoU + DFL, BCE class), reused as is.
- segmentation: cross-entropy with ``ignore_index`` (logits upsampled bilinearly to the mask size when they are
  smaller), optional Dice (``segmentation_models_pytorch.losses.DiceLoss``).

All terms are per-image means (not multiplied by the batch size, unlike YOLOv5/Ultralytics' returned totals).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.errors import CompatibilityError
from mtkd.models.outputs import DetOutput, MultiTaskOutput

#: default gains: YOLOv5 hyp.scratch-low (anchor) and Ultralytics default.yaml (anchor-free)
ANCHOR_GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5}
ANCHOR_FREE_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
BALANCE = (4.0, 1.0, 0.4)  # YOLOv5 objectness weight of P3, P4, P5


class _UltralyticsShim:
    """The two things ``v8DetectionLoss`` reads from a model: ``.args`` gains and ``.model[-1]`` (stride/nc/reg_max)."""

    def __init__(
        self, nc: int, strides: tuple[int, ...], reg_max: int, gains: dict[str, float], device
    ) -> None:
        self.args = SimpleNamespace(**gains)
        self.model = [
            SimpleNamespace(
                stride=torch.tensor(strides, dtype=torch.float32, device=device), nc=nc, reg_max=reg_max
            )
        ]
        self._p = torch.zeros(1, device=device)

    def parameters(self):
        return iter([self._p])


class AnchorDetLoss:
    """YOLOv5 ``ComputeLoss`` on raw ``[B, na, H, W, 5 + nc]`` levels; anchors in pixels ``[nl, na, 2]``."""

    def __init__(
        self,
        nc: int,
        strides: tuple[int, ...],
        anchors: Tensor,
        *,
        box: float,
        obj: float,
        cls: float,
        anchor_t: float = 4.0,
        balance: tuple[float, ...] = BALANCE,
    ) -> None:
        self.nc, self.strides, self.anchors = nc, tuple(strides), anchors.float()
        self.gains = {"box": box, "obj": obj, "cls": cls}
        self.anchor_t = anchor_t
        self.balance = balance if len(balance) == len(strides) else (1.0,) * len(strides)

    def build_targets(self, raw: list[Tensor], tgt: Tensor) -> list[tuple]:
        """``tgt [nt, 6]`` = (image, class, cx, cy, w, h) pixels -> per level ``(b, a, gj, gi, tbox, anchors, cls,
        keep)`` over every candidate: each target x anchor x {its cell, the 4 neighbour cells}, ``5 * na * nt``
        rows. ``keep`` (bool) marks YOLOv5's matches: anchor ratio < ``anchor_t`` and, for a neighbour cell, the
        target's centre within half a cell of it; the kept rows are YOLOv5's, in its order. Fixed shapes instead of
        boolean indexing, so building the targets needs no host sync on CUDA (``__call__`` masks with ``keep``)."""
        na, nt, dev = self.anchors.shape[1], tgt.shape[0], tgt.device
        ai = torch.arange(na, device=dev, dtype=tgt.dtype).view(na, 1).repeat(1, nt)
        tgt = torch.cat((tgt.repeat(na, 1, 1), ai[..., None]), 2)  # [na, nt, 7]
        g = 0.5
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=dev, dtype=tgt.dtype) * g
        out = []
        for i, p in enumerate(raw):
            h, w = p.shape[2:4]
            anchors = self.anchors[i].to(dev) / self.strides[i]  # grid units
            t = tgt.clone()
            t[..., 2:6] /= self.strides[i]
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                ratio_ok = torch.max(r, 1 / r).max(2)[0] < self.anchor_t  # [na, nt]
                gxy = t[..., 2:4]
                gxi = torch.tensor([w, h], device=dev, dtype=t.dtype) - gxy
                left, top = ((gxy % 1 < g) & (gxy > 1)).unbind(-1)  # also the nearest neighbour cells
                right, bottom = ((gxi % 1 < g) & (gxi > 1)).unbind(-1)
                cells = torch.stack((torch.ones_like(left), left, top, right, bottom))  # [5, na, nt]
                keep = (cells & ratio_ok).reshape(-1)
                t = t.repeat((5, 1, 1)).reshape(-1, 7)
                offsets = (torch.zeros_like(gxy)[None] + off[:, None, None]).reshape(-1, 2)
            else:
                t, offsets, keep = tgt[0], 0, torch.zeros(0, dtype=torch.bool, device=dev)
            b, c = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - offsets).long()
            gi, gj = gij[:, 0].clamp_(0, w - 1), gij[:, 1].clamp_(0, h - 1)
            out.append((b, a, gj, gi, torch.cat((gxy - gij, gwh), 1), anchors[a], c, keep))
        return out

    def __call__(self, raw: list[Tensor], tgt: Tensor) -> dict[str, Tensor]:
        """YOLOv5's loss over the kept candidates of ``build_targets``: means over them as masked sums (no
        boolean indexing); objectness targets written for kept rows only (the others go to a slot past the
        grid), in YOLOv5's order, so a cell matched twice gets the same (last) IoU."""
        from ultralytics.utils.metrics import bbox_iou

        lbox = lobj = lcls = raw[0].new_zeros(())
        for (b, a, gj, gi, tbox, anch, tcls, keep), p, bal in zip(
            self.build_targets(raw, tgt), raw, self.balance
        ):
            # objectness targets [B, na, H, W] plus one slot past the grid, where candidates not kept are written
            tobj_slots = torch.zeros(p.shape[:4].numel() + 1, dtype=p.dtype, device=p.device)
            tobj = tobj_slots[:-1].view(p.shape[:4])
            if b.numel():  # some targets (a host-side shape: no sync)
                k = keep.to(torch.float32)
                n_kept = k.sum().clamp(min=1.0)
                ps = p[b, a, gj, gi]  # [n, 5 + nc]
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anch
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox, xywh=True, CIoU=True).squeeze(-1)
                lbox = lbox + ((1.0 - iou) * k).sum() / n_kept
                na, h, w = p.shape[1:4]
                cell = torch.where(keep, ((b * na + a) * h + gj) * w + gi, tobj.numel())
                tobj_slots.index_put_((cell,), iou.detach().clamp(0).to(p.dtype))
                if self.nc > 1:
                    t = torch.zeros_like(ps[:, 5:])
                    t[torch.arange(b.numel(), device=p.device), tcls] = 1.0
                    bce = F.binary_cross_entropy_with_logits(ps[:, 5:], t, reduction="none")
                    lcls = lcls + (bce * k[:, None]).sum() / (n_kept * self.nc)
            lobj = lobj + F.binary_cross_entropy_with_logits(p[..., 4], tobj) * bal
        lbox, lobj, lcls = lbox * self.gains["box"], lobj * self.gains["obj"], lcls * self.gains["cls"]
        return {"det_loss": lbox + lobj + lcls, "det_box": lbox, "det_obj": lobj, "det_cls": lcls}


class TaskLoss:
    """Detection + segmentation task losses of any adapter.

    Args:
        model: the adapter (reads ``det_spec()`` and ``nc_seg``; DDP-wrapped models are unwrapped).
        dice_weight: weight of a Dice term added to the seg cross-entropy (0 = CE only).
        box, obj, cls, dfl: gains overriding ``ANCHOR_GAINS`` / ``ANCHOR_FREE_GAINS``.
        ignore_index: mask value excluded from the seg loss.

    ``__call__(out, batch)`` -> ``{"det_loss", "det_box", "det_cls", "det_obj" (anchor) | "det_dfl" (anchor-free),
    "seg_loss", "seg_ce", "seg_dice" (if dice_weight > 0)}``, scalars with grads; a task the model lacks is omitted.
    An output with several seg tasks (``out.seg_tasks``) gives those seg terms per task as ``<term>/<task>``
    (``seg_loss/lane``, ``seg_ce/lane``, ...) against ``batch["seg_masks"][task]``, and ``seg_loss`` = their sum.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dice_weight: float = 0.0,
        box: float | None = None,
        obj: float | None = None,
        cls: float | None = None,
        dfl: float | None = None,
        ignore_index: int = 255,
    ) -> None:
        model = getattr(model, "module", model)
        self.spec = model.det_spec()
        tasks = getattr(model, "seg_tasks", None)  # several seg tasks: per-task losses from the output itself
        several = isinstance(tasks, dict) and bool(tasks) and list(tasks) != ["seg"]
        self.nc_seg = sum(len(v) for v in tasks.values()) if several else int(model.nc_seg)
        self.ignore_index = int(ignore_index)
        self.dice_weight = float(dice_weight)
        self._dice = None
        if self.dice_weight > 0:
            from segmentation_models_pytorch.losses import DiceLoss

            self._dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=self.ignore_index)
        given = {"box": box, "obj": obj, "cls": cls, "dfl": dfl}
        self._anchor_free: Any = None
        self._anchor: AnchorDetLoss | None = None
        if self.spec is not None and self.spec.kind == "anchor":
            g = {k: v if given[k] is None else given[k] for k, v in ANCHOR_GAINS.items()}
            self._anchor = AnchorDetLoss(
                self.spec.num_classes,
                self.spec.strides,
                torch.tensor(self.spec.anchors, dtype=torch.float32),
                **g,
            )
        elif self.spec is not None:
            self._af_gains = {k: v if given[k] is None else given[k] for k, v in ANCHOR_FREE_GAINS.items()}
            self._af_device: torch.device | None = None

    # -- detection ----------------------------------------------------------------------------------------
    def _v8_loss(self, device: torch.device):
        if self._anchor_free is None or self._af_device != device:
            from ultralytics.utils.loss import v8DetectionLoss

            shim = _UltralyticsShim(
                self.spec.num_classes, self.spec.strides, int(self.spec.reg_max or 1), self._af_gains, device
            )
            self._anchor_free, self._af_device = v8DetectionLoss(shim), device
        return self._anchor_free

    def det(self, det: DetOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        boxes = batch["boxes"].to(det.cls.device).float().reshape(-1, 4)
        labels = batch["labels"].to(det.cls.device).reshape(-1)
        bidx = batch["batch_idx"].to(det.cls.device).reshape(-1)
        h, w = batch["images"].shape[-2:]
        if self._anchor is not None:
            cxcy, wh = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
            tgt = torch.cat((bidx[:, None].float(), labels[:, None].float(), cxcy, wh), 1)
            return self._anchor(det.raw, tgt)
        loss_fn = self._v8_loss(det.cls.device)
        # v8DetectionLoss.preprocess expects the targets grouped by image
        order = torch.argsort(bidx, stable=True)
        boxes, labels, bidx = boxes[order], labels[order], bidx[order]
        scale = boxes.new_tensor([w, h, w, h])
        xywh = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1) / scale
        v8_batch = {"batch_idx": bidx.float(), "cls": labels.float().view(-1, 1), "bboxes": xywh}
        raw = {"boxes": det.raw["boxes"], "scores": det.raw["scores"], "feats": det.raw["feats"]}
        _, loss, _ = loss_fn.get_assigned_targets_and_loss(raw, v8_batch)  # not multiplied by batch size
        return {"det_loss": loss.sum(), "det_box": loss[0], "det_cls": loss[1], "det_dfl": loss[2]}

    # -- segmentation -------------------------------------------------------------------------------------
    def seg(self, logits: Tensor, masks: Tensor) -> dict[str, Tensor]:
        masks = masks.to(logits.device).long()
        if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        valid = (masks != self.ignore_index).sum().clamp(min=1)
        ce = F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index, reduction="sum") / valid
        out = {"seg_ce": ce, "seg_loss": ce}
        if self._dice is not None:
            dice = self._dice(logits.float(), masks)
            out.update(seg_dice=dice, seg_loss=ce + self.dice_weight * dice)
        return out

    def __call__(self, out: MultiTaskOutput, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        if out.det is not None and self.spec is not None:
            losses.update(self.det(out.det, batch))
        if out.multi_seg:
            masks = batch.get("seg_masks")
            if not isinstance(masks, dict) or set(out.seg_tasks) - set(masks):
                have = ", ".join(masks) if isinstance(masks, dict) else "none"
                raise CompatibilityError(
                    f"the model has seg tasks {', '.join(out.seg_tasks)} but the batch has masks for: {have} "
                    "(train a several-task model on a seg_tasks dataset with the same task names)"
                )
            total = None
            for task, logits in out.seg_tasks.items():
                terms = self.seg(logits, masks[task])
                losses.update({f"{k}/{task}": v for k, v in terms.items()})
                total = terms["seg_loss"] if total is None else total + terms["seg_loss"]
            losses["seg_loss"] = total
        elif out.seg is not None and self.nc_seg:
            losses.update(self.seg(out.seg, batch["masks"]))
        return losses
