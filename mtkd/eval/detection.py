"""COCO-style detection mAP (pycocotools definitions) with a ``reset / process / evaluate`` evaluator.

Definitions (identical to pycocotools ``COCOeval(iouType="bbox")``): 101-point interpolated precision, IoU
thresholds .50:.05:.95, at most 100 detections per image (``maxDets = [1, 10, 100]``), size buckets from the
ground-truth box area (small < 32², medium < 96², large). The computation runs in faster-coco-eval (checked
against pycocotools to 1e-6 in ``tests/eval/test_detection.py``; ``backend="pycocotools"`` selects the
reference implementation). A metric COCOeval reports as -1 (no ground truth for that class or size bucket)
is returned as ``None`` (``null`` in JSON).

COCO ids: image ids are ``1..N`` in processing order; ``category_id = class index + 1`` (COCO ids start at 1),
with the class name in ``categories``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtkd.eval.batch import target
from mtkd.eval.evaluator import DatasetEvaluator
from mtkd.eval.outputs import EvalOutputs
from mtkd.utils.atomic import write_text
from mtkd.utils.dist import gather_objects, rank_and_world

BACKENDS = ("faster_coco_eval", "pycocotools")
# COCOeval.stats order (first 12 entries, both backends)
_STAT_KEYS = (
    "mAP50_95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


def _as_np(x: Any, dtype: Any, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64 if dtype == np.float64 else torch.int64).numpy()
    return np.asarray(x, dtype=dtype).reshape(-1, *shape_tail)


def _record(pred: dict[str, Any] | None, target: dict[str, Any]) -> dict[str, Any]:
    """One image as compact numpy arrays (float64 boxes/scores, int64 labels; picklable for gathering)."""
    h, w = (int(v) for v in target["image_size"])
    pred = pred or {"boxes": [], "scores": [], "labels": []}
    rec: dict[str, Any] = {
        "height": h,
        "width": w,
        "file_name": str(target.get("path", target.get("file_name", ""))),
        "gt_boxes": _as_np(target["boxes"], np.float64, (4,)),
        "gt_labels": _as_np(target["labels"], np.int64),
        "boxes": _as_np(pred["boxes"], np.float64, (4,)),
        "scores": _as_np(pred["scores"], np.float64),
        "labels": _as_np(pred["labels"], np.int64),
    }
    if len(rec["gt_boxes"]) != len(rec["gt_labels"]):
        raise ValueError(f"target has {len(rec['gt_boxes'])} boxes but {len(rec['gt_labels'])} labels")
    if not len(rec["boxes"]) == len(rec["scores"]) == len(rec["labels"]):
        raise ValueError("prediction boxes, scores and labels must have the same length")
    return rec


def _xywh(boxes: Any) -> list[list[float]]:
    """``[n, 4]`` xyxy boxes (array-like) as float64 ``[x, y, w, h]`` lists (the same float64 subtraction as
    COCO's own conversion, done for all boxes at once)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()


def _check_labels(labels: np.ndarray, nc: int, message: str) -> None:
    """``ValueError(message.format(label))`` for the first label outside ``[0, nc)``."""
    bad = labels[(labels < 0) | (labels >= nc)]
    if bad.size:
        raise ValueError(message.format(bad[0]))


def to_coco_json(
    records: Sequence[dict[str, Any]], class_names: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the COCO ground-truth dict and the COCO results list for ``records``.

    Args:
        records: per image ``{"height", "width", "file_name", "gt_boxes" [n, 4] xyxy, "gt_labels" [n],
            "boxes" [m, 4] xyxy, "scores" [m], "labels" [m]}`` (arrays or lists; what ``DetectionEvaluator``
            accumulates), boxes in pixels.
        class_names: detection class names; class index ``i`` becomes ``category_id = i + 1``.

    Returns:
        ``(ground_truth, results)``: ``ground_truth`` has ``images``, ``annotations`` (``bbox`` xywh,
        ``area`` = box area, ``iscrowd`` 0) and ``categories``; ``results`` is a list of
        ``{"image_id", "category_id", "bbox", "score"}``. Both load directly in pycocotools.
    """
    nc = len(class_names)
    images, anns, results = [], [], []
    for img_id, r in enumerate(records, start=1):
        images.append({"id": img_id, "width": r["width"], "height": r["height"], "file_name": r["file_name"]})
        gt_labels = np.asarray(r["gt_labels"]).reshape(-1)
        _check_labels(
            gt_labels, nc, f"ground-truth label {{}} outside [0, {nc}) for image {r['file_name']!r}"
        )
        for xywh, lab in zip(_xywh(r["gt_boxes"]), gt_labels.tolist()):
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": int(lab) + 1,
                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0,
            })  # fmt: skip
        labels = np.asarray(r["labels"], np.int64).reshape(-1)
        _check_labels(labels, nc, f"predicted label {{}} outside [0, {nc})")
        scores = np.asarray(r["scores"], np.float64).reshape(-1).tolist()
        results.extend(
            {"image_id": img_id, "category_id": lab + 1, "bbox": box, "score": score}
            for box, score, lab in zip(_xywh(r["boxes"]), scores, labels.tolist())
        )
    categories = [{"id": i + 1, "name": str(n)} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": categories}, results


def _none_if_neg(v: float) -> float | None:
    return None if v < 0 else float(v)


def _mean_valid(p: np.ndarray) -> float | None:
    """COCO's definition: mean of the precision entries that are > -1; ``None`` if there are none."""
    p = p[p > -1]
    return float(p.mean()) if p.size else None


def coco_eval(gt: dict[str, Any], results: list[dict[str, Any]], backend: str = "faster_coco_eval") -> Any:
    """Run ``COCOeval(iouType="bbox")`` (evaluate, accumulate, summarize) quietly; returns the COCOeval object.

    Works with an empty ``results`` list (pycocotools' ``loadRes([])`` crashes; an empty result set is built
    directly instead). ``gt`` and ``results`` are not modified (COCOeval annotates the dicts it is given).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        coco_gt = COCO()
        coco_gt.dataset = _copy_coco(gt)
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(gt["images"]),
            "annotations": _result_annotations(results),
            "categories": [dict(c) for c in gt["categories"]],
        }
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _copy_coco(gt: dict[str, Any]) -> dict[str, Any]:
    """A copy of a COCO dict that COCOeval may annotate without touching ``gt``: each image, annotation and
    category dict copied with its list values (``bbox``, ``segmentation`` polygons) one level deep; a tenth of
    ``copy.deepcopy``'s time for the same protection on COCO's flat records."""

    def rec(d: dict[str, Any]) -> dict[str, Any]:
        return {
            k: [list(x) if isinstance(x, list) else x for x in v] if isinstance(v, list) else v
            for k, v in d.items()
        }

    return {
        k: [rec(d) if isinstance(d, dict) else d for d in v] if isinstance(v, list) else v
        for k, v in gt.items()
    }


def _result_annotations(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The detection annotations ``loadRes`` builds from bbox results (``area`` = w * h, ``id`` from 1,
    ``iscrowd`` 0), without the box-polygon ``segmentation`` it adds, which bbox evaluation never reads: one
    copy of each result instead of ``loadRes``'s copy and per-result rework, the largest cost of a
    many-detection evaluation (``conf`` 0.001, up to 300 per image)."""
    return [
        {**r, "area": r["bbox"][2] * r["bbox"][3], "id": i, "iscrowd": 0}
        for i, r in enumerate(results, start=1)
    ]


class DetectionEvaluator(DatasetEvaluator):
    """COCO mAP over a dataset: ``reset()``, ``process(batch, outputs)`` per batch, ``evaluate()`` at the end.

    ``process`` scores the detections of ``outputs`` (original pixels) against the ground truth of ``batch``
    (original pixels, ``mtkd.eval.batch.target``); ``add(preds, targets)`` takes already-decoded images.
    Under DDP (``torch.distributed`` initialized) ``evaluate()`` all-gathers the per-image records of every
    rank (in rank order) and **every rank** computes the same metrics, so all ranks can use them (e.g. for
    best-checkpoint selection). Each rank must process disjoint images (see ``inference_on_dataset``).

    Args:
        class_names: detection class names (index = label).
        backend: ``"faster_coco_eval"`` (default) or ``"pycocotools"``.
        output_dir: when set, ``evaluate()`` also writes ``predictions.json`` and ``ground_truth.json`` there
            (rank 0, ``save_json``).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        backend: str = "faster_coco_eval",
        output_dir: str | os.PathLike | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.class_names = [str(n) for n in class_names]
        self.backend = backend
        self.output_dir = output_dir
        self._records: list[dict[str, Any]] = []
        self._coco: tuple[dict[str, Any], list[dict[str, Any]]] | None = None  # set by evaluate()

    def reset(self) -> None:
        self._records = []
        self._coco = None

    def process(self, batch: dict[str, Any], outputs: EvalOutputs) -> None:
        """Add the first ``batch["n_real"]`` images: ``outputs.det(i)`` against ``target(batch, i)`` (see
        ``DatasetEvaluator.process`` for the shapes)."""
        n = batch["n_real"]
        self.add([outputs.det(i) for i in range(n)], [target(batch, i) for i in range(n)])

    def add(self, preds: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        """Add decoded images.

        Args:
            preds: per image ``{"boxes": [N, 4] xyxy pixels, "scores": [N], "labels": [N] int}``
                (tensors, arrays or lists).
            targets: per image ``{"boxes": [M, 4] xyxy pixels, "labels": [M], "image_size": (H, W)}``, optional
                ``"path"`` (written as ``file_name``). Boxes of preds and targets in the same coordinates.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        self._records.extend(_record(p, t) for p, t in zip(preds, targets))
        self._coco = None

    @property
    def num_images(self) -> int:
        """Images processed on this rank."""
        return len(self._records)

    def gathered_records(self) -> list[dict[str, Any]]:
        """Records of all ranks (rank order); this rank's records when not distributed."""
        return [r for part in gather_objects(self._records) for r in part]

    def coco_json(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(ground_truth, results)`` COCO dicts of everything processed (all ranks), see ``to_coco_json``."""
        return to_coco_json(self.gathered_records(), self.class_names)

    def save_json(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``out_dir/predictions.json`` (COCO results) and ``out_dir/ground_truth.json`` (COCO GT).

        Each file is written atomically (``mtkd.utils.atomic``): a failed write raises ``OutputError`` naming
        the file and keeps the previous one. After ``evaluate()`` this reuses what was evaluated (no
        communication, so under DDP rank 0 alone may call it); before, it gathers from all ranks, so every rank
        must call it.
        """
        gt, results = self._coco if self._coco is not None else self.coco_json()
        out = Path(out_dir)
        paths = out / "predictions.json", out / "ground_truth.json"
        write_text(paths[0], json.dumps(results), what="predictions JSON")
        write_text(paths[1], json.dumps(gt), what="ground-truth JSON")
        return paths

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Returns ``{"det": {...}}`` with ``mAP50_95, mAP50, mAP75, mAP_small, mAP_medium, mAP_large, AR1,
        AR10, AR100, AR_small, AR_medium, AR_large``, ``recall50`` (recall at IoU 0.5, 100 detections per image,
        mean over classes; fractions or ``None``), ``per_class_AP50_95`` and
        ``per_class_AP50`` (``{name: value or None}``; ``None`` = class has no ground truth), ``images`` and
        ``instances`` (ground-truth boxes). Writes the COCO files to ``output_dir`` (rank 0) when set."""
        gt, results = self._coco = self.coco_json()
        metrics = {"det": self._metrics(gt, results)}
        if self.output_dir is not None and rank_and_world()[0] == 0:
            self.save_json(self.output_dir)
        return metrics

    def _metrics(self, gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
        names = self.class_names
        if not gt["images"]:
            out: dict[str, Any] = dict.fromkeys(_STAT_KEYS)
            out.update(
                per_class_AP50_95=dict.fromkeys(names), per_class_AP50=dict.fromkeys(names), recall50=None
            )
            return {**out, "images": 0, "instances": 0}
        ev = coco_eval(gt, results, self.backend)
        stats = [float(s) for s in np.asarray(ev.stats)[: len(_STAT_KEYS)]]
        out = {k: _none_if_neg(v) for k, v in zip(_STAT_KEYS, stats)}
        # precision: [T iou, R recall, K class, A area, M maxDets]; area "all" = 0, maxDets 100 = -1
        prec = np.asarray(ev.eval["precision"])
        cat_ids = list(ev.params.catIds)
        ap, ap50 = {}, {}
        for i, name in enumerate(names):
            k = cat_ids.index(i + 1)
            ap[name] = _mean_valid(prec[:, :, k, 0, -1])
            ap50[name] = _mean_valid(prec[0, :, k, 0, -1])
        out.update(per_class_AP50_95=ap, per_class_AP50=ap50)
        # recall at IoU 0.5 (YOLOP reports it next to mAP50): recall [T, K, A, M], area all, 100 dets per image,
        # mean over the classes with ground truth
        out["recall50"] = _mean_valid(np.asarray(ev.eval["recall"])[0, :, 0, -1])
        return {**out, "images": len(gt["images"]), "instances": len(gt["annotations"])}
