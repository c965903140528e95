"""Dataset-level semantic-segmentation metrics from one confusion matrix (DESIGN.md §4).

One ``C x C`` int64 confusion matrix is accumulated over every labeled pixel of the dataset (rows = ground
truth, columns = prediction; pixels whose ground truth is ``ignore_index`` are excluded), so memory is
constant in the number of images. It lives on the predictions' device and grows by one ``bincount`` per batch
(no per-image work, no copy of the predictions to the host). From it:

- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; a class with no ground-truth **and** no predicted pixels has an
  undefined IoU: it is left out of the mean and listed in ``absent_classes`` (a class predicted but never in
  the ground truth counts, with IoU 0);
- ``mIoU`` = mean IoU over the other classes;
- ``pixel_acc = sum_c TP_c / labeled pixels``; ``mAcc`` = mean over classes with ground truth of
  ``TP_c / GT_c``.

A model with several seg tasks gets one evaluator per task (``task=``), whose metrics are ``{"seg/<task>":
{...}}``. A line task (``lines=True``: lane lines) adds YOLOP's lane metrics for its line class (class 1, the
first after background): ``line_acc = TP_1 / GT_1`` (YOLOP's ``lineAccuracy``: the share of line pixels
found) and ``line_IoU = IoU_1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtkd.errors import DatasetError
from mtkd.eval.evaluator import DatasetEvaluator
from mtkd.eval.outputs import EvalOutputs
from mtkd.utils.dist import all_reduce_sum

_MAX_ROWS = 1 << 12  # bincount rows (target values) of the fast path


class SegmentationEvaluator(DatasetEvaluator):
    """Confusion-matrix mIoU: ``reset()``, ``process(batch, outputs)`` per batch, ``evaluate()`` at the end.

    ``process`` compares each image at original resolution against the file's mask when the batch carries
    the raw sample (``batch["source"][i]``), else at input resolution against the batch mask (whose letterbox
    padding is ``ignore_index``); ``add(pred, target)`` takes class maps directly.

    Under DDP ``evaluate()`` sums the confusion matrices of all ranks (``all_reduce``); every rank returns the
    same metrics.

    Args:
        num_classes: number of segmentation classes ``C``.
        ignore_index: ground-truth value of unlabeled pixels (excluded).
        class_names: names for the per-class outputs (default ``"0".."C-1"``).
        task: the seg task of a several-task model to evaluate (``None``: the single task ``out.seg``).
        lines: add the lane-line metrics (module docstring); needs ``num_classes >= 2``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        *,
        task: str | None = None,
        lines: bool = False,
    ) -> None:
        if lines and num_classes < 2:
            raise ValueError(
                f"a line task needs a background and a line class, got num_classes={num_classes}"
            )
        self.task, self.lines = task, bool(lines)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = (
            [str(n) for n in class_names] if class_names else [str(i) for i in range(num_classes)]
        )
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    def process(self, batch: dict[str, Any], outputs: EvalOutputs) -> None:
        """Add the first ``batch["n_real"]`` images (see ``DatasetEvaluator.process`` for the shapes):
        ``outputs.seg(i)`` ``[H0, W0]`` against the raw mask ``[H0, W0]``, or ``outputs.seg_input[i]``
        ``[S, S]`` against ``batch["masks"][i]``. A model without segmentation output adds nothing. The whole
        batch is counted at once on the predictions' device (the masks are copied there together)."""
        task = self.task
        if (outputs.raw.seg if task is None else outputs.raw.seg_tasks.get(task)) is None:
            return
        preds, targets = [], []
        for i in range(batch["n_real"]):
            raw = batch["source"][i]
            if raw is not None:
                preds.append(outputs.seg_of(task, i))
                mask = raw.mask if task is None else raw.masks[task]
                targets.append(torch.from_numpy(np.array(mask)))  # a writable copy
            else:
                preds.append(outputs.seg_input_of(task)[i])
                targets.append(batch["masks"][i] if task is None else batch["seg_masks"][task][i])
        if not preds:
            return
        if len({t.dtype for t in targets}) > 1:
            targets = [t.long() for t in targets]
        dev = preds[0].device
        target = torch.cat([t.reshape(-1) for t in targets]).to(dev, non_blocking=True).long()
        self._count(torch.cat([p.reshape(-1) for p in preds]), target)

    @torch.no_grad()
    def add(self, pred: Tensor, target: Tensor) -> None:
        """Add class maps.

        Args:
            pred: ``[B, H, W]`` (or ``[H, W]``) predicted class ids in ``[0, C)``.
            target: same shape, ground-truth class ids in ``[0, C)`` or ``ignore_index``.

        Raises:
            DatasetError: a ground-truth value is neither a class id nor ``ignore_index``.
        """
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        self._count(pred.reshape(-1), target.to(pred.device).reshape(-1))

    @torch.no_grad()
    def _count(self, pred: Tensor, target: Tensor) -> None:
        """Add flat ``pred [N]`` and ``target [N]`` (one device; the confusion matrix moves there).

        One ``bincount`` over ``(target, pred)`` pairs with a row for every target value up to
        ``ignore_index``; rows ``0..C-1`` are the confusion matrix, the ``ignore_index`` row is dropped and any
        other non-empty row is a bad mask value. One host sync (value ranges), a second when the masks hold
        values beyond the classes (the ``ignore_index`` check). Targets or predictions outside those ranges
        take ``_count_exact``, the direct computation.
        """
        c, ign = self.num_classes, self.ignore_index
        if not target.numel():
            return
        t, p = target.long(), pred.long()
        t_lo, t_hi, p_lo, p_hi = torch.stack((*t.aminmax(), *p.aminmax())).tolist()
        n_rows = max(c, ign + 1)
        if t_lo >= 0 and t_hi < n_rows <= _MAX_ROWS and p_lo >= 0 and p_hi < c:
            rows = torch.bincount(t * c + p, minlength=n_rows * c).view(n_rows, c)
            if t_hi >= c:
                beyond = rows[c:].sum(1)
                if ign >= c:
                    beyond[ign - c] = 0
                if bool(beyond.any()):
                    self._count_exact(t, p)  # raises DatasetError naming the first bad value
            counts = rows[:c]
            if 0 <= ign < c:  # an ignored class id: its pixels do not count
                counts = counts.clone()
                counts[ign] = 0
        else:
            counts = self._count_exact(t, p)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts

    def _count_exact(self, t: Tensor, p: Tensor) -> Tensor:
        """``[C, C]`` counts of int64 ``t [N]``, ``p [N]`` over the labeled pixels, after checking their values."""
        c = self.num_classes
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
            bad = t[(t < 0) | (t >= c)][0].item()
            raise DatasetError(
                f"segmentation mask value {bad} is neither a class id in [0, {c}) nor ignore_index "
                f"{self.ignore_index}"
            )
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= c):
            raise ValueError(f"predicted class ids must be in [0, {c})")
        return torch.bincount(t * c + p, minlength=c * c).reshape(c, c)

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Returns ``{"seg": {"mIoU", "pixel_acc", "mAcc", "per_class_IoU": {name: IoU or None},
        "confusion_matrix": [[int]] (rows GT, cols pred), "absent_classes": [names], "pixels": int}}``.
        Metrics are ``None`` when no pixel is labeled."""
        cm = all_reduce_sum(self.confusion).double()
        tp = cm.diag()
        gt = cm.sum(1)
        pr = cm.sum(0)
        union = gt + pr - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
        total = cm.sum()
        has_gt = gt > 0
        names = self.class_names
        lines = {}
        if self.lines:  # YOLOP's lane metrics of the line class (1)
            lines = {
                "line_acc": float(tp[1] / gt[1]) if gt[1] > 0 else None,
                "line_IoU": float(iou[1]) if present[1] else None,
            }
        return {
            "seg" if self.task is None else f"seg/{self.task}": {
                **lines,
                "mIoU": float(iou[present].mean()) if present.any() else None,
                "pixel_acc": float(tp.sum() / total) if total > 0 else None,
                "mAcc": float((tp[has_gt] / gt[has_gt]).mean()) if has_gt.any() else None,
                "per_class_IoU": {n: (float(iou[i]) if present[i] else None) for i, n in enumerate(names)},
                "confusion_matrix": cm.long().tolist(),
                "absent_classes": [n for i, n in enumerate(names) if not present[i]],
                "pixels": int(total),
            }
        }
