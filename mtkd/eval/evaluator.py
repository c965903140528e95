"""The evaluator protocol and the combinator (after detectron2 ``evaluation/evaluator.py``).

Every evaluator has the same three methods and the driver (``mtkd.eval.evaluate.inference_on_dataset``) calls
them without knowing which evaluator it holds:

- ``reset()``: forget everything processed (called once before the first batch);
- ``process(batch, outputs)``: add one batch (see ``DatasetEvaluator.process`` for both arguments);
- ``evaluate() -> dict``: the result, reduced over all ranks under DDP (every rank calls it, in the same
  order, and every rank gets the same result); a dict of top-level metrics JSON sections such as
  ``{"det": {...}}``; ``{}`` for an evaluator that only writes files.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mtkd.eval.outputs import EvalOutputs


class DatasetEvaluator:
    """Base class of the evaluators: ``reset / process(batch, outputs) / evaluate``."""

    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, batch: dict[str, Any], outputs: EvalOutputs) -> None:
        """Add one batch of ``B`` images (letterboxed to ``S x S``).

        Args:
            batch: the loader's batch (DESIGN.md §2, tensors on the CPU): ``images`` float ``[B, 3, S, S]`` in
                [0, 1], ``masks`` int64 ``[B, S, S]`` (``ignore_index`` = unlabeled, also the padding),
                ``boxes`` float ``[N, 4]`` xyxy input pixels, ``labels`` int64 ``[N]``, ``batch_idx`` int64
                ``[N]``; the letterbox of each image: ``paths`` (``B`` file paths), ``orig_sizes`` ``[B, 2]``
                ``(H0, W0)``, ``pads`` ``[B, 2]`` ``(top, left)``, ``scales`` ``[B]``; added by the driver:
                ``source`` (``B`` items: the dataset's original-resolution ground truth — ``RawSample`` or
                the workers' ``GroundTruth`` — with ``masks``/``mask`` ``[H0, W0]``, ``boxes`` ``[M, 4]`` xyxy
                original pixels, ``labels`` ``[M]`` and ``image`` uint8 ``[H0, W0, 3]`` (a ``GroundTruth``
                decodes it on access), or ``None`` when the dataset has no raw source) and ``n_real`` (int: only images
                ``0 .. n_real-1`` count; the rest repeat samples to even out DDP shards). ``mtkd.eval.batch``
                reads the ground truth of image ``i`` in original pixels from it.
            outputs: the model's predictions for the batch (``EvalOutputs``): the raw ``MultiTaskOutput``
                (``seg`` logits ``[B, C_seg, h, w]``, ``det`` ``DetOutput``) and decoded views per image —
                boxes in original pixels, class maps at original or input resolution.
        """
        raise NotImplementedError(f"{type(self).__name__}.process")

    def evaluate(self) -> dict[str, Any]:
        """The result (same on every rank; every rank must call it); ``{}`` when there is nothing to report."""
        return {}


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators as one: each call goes to every evaluator in order; ``evaluate()`` merges their
    results and raises ``ValueError`` when two of them return the same top-level key (nothing is overwritten).
    """

    def __init__(self, evaluators: Iterable[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for ev in self.evaluators:
            ev.reset()

    def process(self, batch: dict[str, Any], outputs: EvalOutputs) -> None:
        for ev in self.evaluators:
            ev.process(batch, outputs)

    def evaluate(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for ev in self.evaluators:
            for key, value in (ev.evaluate() or {}).items():
                if key in merged:
                    raise ValueError(
                        f"evaluators {owner[key]} and {type(ev).__name__} both return the key "
                        f"{key!r}; each metrics key must come from one evaluator"
                    )
                merged[key], owner[key] = value, type(ev).__name__
        return merged
