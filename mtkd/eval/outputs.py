"""``EvalOutputs``: the predictions of one batch as every evaluator reads them (the ``outputs`` of ``process``).

Predictions are mapped back from the letterboxed input ``S x S`` to the **original** image — boxes:
``(x - left) / scale`` (clipped); segmentation logits: letterbox padding cropped, resized bilinearly to
``(H0, W0)``, then argmax. Each view is computed for the whole batch on first use and cached, so evaluators
that need the same view (detection and sample overlays, segmentation and sample overlays) share one
computation, and the detections cross to the host once per batch.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtkd.eval.batch import Letterbox, seg_to_original

if TYPE_CHECKING:
    from mtkd.models.outputs import MultiTaskOutput


def _no_dets() -> dict[str, Tensor]:
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}


class EvalOutputs:
    """Raw model output of a batch of ``B`` images plus decoded per-image views.

    The views are computed for the whole batch at once, on the model's device: detections by one
    ``postprocess_det`` call and brought to the host in one transfer (``det``), class maps at original
    resolution by one resize per distinct letterbox (``seg``).

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
        self.batch_size = len(batch["images"])
        self._batch = batch
        self._nms = {"conf": conf, "iou": iou, "max_det": max_det}

    def letterbox(self, i: int) -> Letterbox:
        return self.letterboxes[i]

    @cached_property
    def letterboxes(self) -> list[Letterbox]:
        """The ``B`` letterboxes of the batch."""
        return [Letterbox.from_batch(self._batch, i) for i in range(self.batch_size)]

    @cached_property
    def dets(self) -> list[dict[str, Tensor]] | None:
        """``postprocess_det`` of the batch in input pixels (``B`` dicts ``boxes [N, 4]`` xyxy, ``scores [N]``,
        ``labels [N]`` int64, on the model's device); ``None`` when the model has no detection output."""
        from mtkd.models.postprocess import postprocess_det

        return None if self.raw.det is None else postprocess_det(self.raw.det, self.hw, **self._nms)

    @cached_property
    def _dets_host(self) -> list[dict[str, Tensor]]:
        """``det(i)`` of every image: the batch's detections packed into one float64 ``[N, 6]`` tensor (box,
        score, label: all exact in float64) and copied to the host at once, then split and mapped back."""
        dets = self.dets
        if dets is None:
            return [_no_dets() for _ in range(self.batch_size)]
        counts = [len(d["boxes"]) for d in dets]
        if not sum(counts):
            return [_no_dets() for _ in dets]
        packed = torch.cat([
            torch.cat([d["boxes"].reshape(-1, 4).double(), d["scores"].reshape(-1, 1).double(),
                       d["labels"].reshape(-1, 1).double()], 1)
            for d in dets
        ]).cpu()  # fmt: skip
        out = []
        for i, (n, rows) in enumerate(zip(counts, packed.split(counts))):
            out.append(
                {
                    "boxes": self.letterbox(i).boxes_to_original(rows[:, :4].float()),
                    "scores": rows[:, 4].float(),
                    "labels": rows[:, 5].long(),
                }
                if n
                else _no_dets()
            )
        return out

    def det(self, i: int) -> dict[str, Tensor]:
        """Detections of image ``i`` as CPU tensors in original pixels: ``boxes [N, 4]`` float xyxy, ``scores
        [N]`` float, ``labels [N]`` int64 (empty when the model has no detection output)."""
        return self._dets_host[i]

    @cached_property
    def _seg_original(self) -> list[Tensor] | None:
        logits = self.raw.seg
        return None if logits is None else seg_to_original(logits, self.hw, self.letterboxes)

    def seg(self, i: int) -> Tensor | None:
        """Class map of image ``i`` at original resolution, int64 ``[H0, W0]`` on the model's device; ``None``
        when the model has no segmentation output."""
        maps = self._seg_original
        return None if maps is None else maps[i]

    @cached_property
    def seg_input(self) -> Tensor | None:
        """Class maps at input resolution, int64 ``[B, S, S]`` (``postprocess_seg``; letterbox padding
        included); ``None`` when the model has no segmentation output."""
        from mtkd.models.postprocess import postprocess_seg

        return None if self.raw.seg is None else postprocess_seg(self.raw.seg, self.hw)

    def seg_of(self, task: str | None, i: int) -> Tensor | None:
        """``seg(i)`` of seg task ``task`` of a several-task model (``None``: the single task): class map of image
        ``i`` at original resolution, int64 ``[H0, W0]``; ``None`` when the model has no such output."""
        if task is None:
            return self.seg(i)
        if task not in self._task_maps:
            logits = self.raw.seg_tasks.get(task)
            self._task_maps[task] = (
                None if logits is None else seg_to_original(logits, self.hw, self.letterboxes)
            )
        maps = self._task_maps[task]
        return None if maps is None else maps[i]

    def seg_input_of(self, task: str | None) -> Tensor | None:
        """``seg_input`` of seg task ``task`` (``None``: the single task): int64 ``[B, S, S]`` class maps."""
        from mtkd.models.postprocess import postprocess_seg

        if task is None:
            return self.seg_input
        logits = self.raw.seg_tasks.get(task)
        return None if logits is None else postprocess_seg(logits, self.hw)

    @cached_property
    def _task_maps(self) -> dict[str, list[Tensor] | None]:
        return {}
