"""``EvalOutputs``: the predictions of one batch as every evaluator reads them (the ``outputs`` of ``process``).

Predictions are mapped back from the letterboxed input ``S x S`` to the **original** image — boxes:
``(x - left) / scale`` (clipped); segmentation logits: letterbox padding cropped, resized bilinearly to
``(H0, W0)``, then argmax. Each view is computed on first use and cached, so evaluators that need the same
view (detection and sample overlays, segmentation and sample overlays) share one computation.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtkd.eval.batch import Letterbox

if TYPE_CHECKING:
    from mtkd.models.outputs import MultiTaskOutput


class EvalOutputs:
    """Raw model output of a batch of ``B`` images plus decoded per-image views.

    Args:
        raw: the model's ``MultiTaskOutput`` for ``images [B, 3, S, S]``: ``seg`` logits ``[B, C_seg, h, w]``
            or ``None``, ``det`` a ``DetOutput`` (raw head output) or ``None``.
        batch: the batch the model saw (letterbox keys ``orig_sizes``, ``pads``, ``scales``; see
            ``DatasetEvaluator.process``).
        conf, iou, max_det: ``postprocess_det`` settings.
    """

    def __init__(
        self,
        raw: MultiTaskOutput,
        batch: dict[str, Any],
        *,
        conf: float = 0.001,
        iou: float = 0.6,
        max_det: int = 300,
    ) -> None:
        self.raw = raw
        self.hw = (int(batch["images"].shape[-2]), int(batch["images"].shape[-1]))
        self._batch = batch
        self._nms = {"conf": conf, "iou": iou, "max_det": max_det}
        self._det: dict[int, dict[str, Tensor]] = {}
        self._seg: dict[int, Tensor | None] = {}

    def letterbox(self, i: int) -> Letterbox:
        return Letterbox.from_batch(self._batch, i)

    @cached_property
    def dets(self) -> list[dict[str, Tensor]] | None:
        """``postprocess_det`` of the batch in input pixels (``B`` dicts ``boxes [N, 4]`` xyxy, ``scores [N]``,
        ``labels [N]`` int64, on the model's device); ``None`` when the model has no detection output."""
        from mtkd.models.postprocess import postprocess_det

        return None if self.raw.det is None else postprocess_det(self.raw.det, self.hw, **self._nms)

    def det(self, i: int) -> dict[str, Tensor]:
        """Detections of image ``i`` as CPU tensors in original pixels: ``boxes [N, 4]`` float xyxy, ``scores
        [N]`` float, ``labels [N]`` int64 (empty when the model has no detection output)."""
        if i not in self._det:
            d = self.dets[i] if self.dets is not None else None
            if d is None or len(d["boxes"]) == 0:
                self._det[i] = {
                    "boxes": torch.zeros(0, 4),
                    "scores": torch.zeros(0),
                    "labels": torch.zeros(0, dtype=torch.long),
                }
            else:
                self._det[i] = {
                    "boxes": self.letterbox(i).boxes_to_original(d["boxes"].cpu()),
                    "scores": d["scores"].float().cpu(),
                    "labels": d["labels"].long().cpu(),
                }
        return self._det[i]

    def seg(self, i: int) -> Tensor | None:
        """Class map of image ``i`` at original resolution, int64 ``[H0, W0]`` on the model's device; ``None``
        when the model has no segmentation output."""
        if i not in self._seg:
            logits = self.raw.seg
            self._seg[i] = None if logits is None else self.letterbox(i).seg_to_original(logits[i], self.hw)
        return self._seg[i]

    @cached_property
    def seg_input(self) -> Tensor | None:
        """Class maps at input resolution, int64 ``[B, S, S]`` (``postprocess_seg``; letterbox padding
        included); ``None`` when the model has no segmentation output."""
        from mtkd.models.postprocess import postprocess_seg

        return None if self.raw.seg is None else postprocess_seg(self.raw.seg, self.hw)
