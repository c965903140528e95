"""``DataSummaryEvaluator``: the ``data`` section of the metrics (split, images evaluated, mask resolution)."""

from __future__ import annotations

from typing import Any

from mtkd.eval.evaluator import DatasetEvaluator
from mtkd.eval.outputs import EvalOutputs
from mtkd.utils.dist import gather_objects


class DataSummaryEvaluator(DatasetEvaluator):
    """Counts the images evaluated (``batch["n_real"]`` per batch, summed over ranks).

    Args:
        split: the split's name (``None`` when the dataset does not say).
        seg_resolution: ``"original"`` (masks compared at file resolution) or ``"input"`` (letterboxed).
    """

    def __init__(self, split: str | None, *, seg_resolution: str) -> None:
        self.split = split
        self.seg_resolution = seg_resolution
        self._images = 0

    def reset(self) -> None:
        self._images = 0

    def process(self, batch: dict[str, Any], outputs: EvalOutputs) -> None:
        """Only ``batch["n_real"]`` is read (see ``DatasetEvaluator.process``)."""
        self._images += int(batch["n_real"])

    def evaluate(self) -> dict[str, Any]:
        """``{"data": {"split", "images", "seg_resolution"}}`` (``images``: all ranks together)."""
        n = sum(gather_objects(self._images))
        return {"data": {"split": self.split, "images": n, "seg_resolution": self.seg_resolution}}
