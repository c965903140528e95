"""Evaluation driver: run a model over a split and feed the evaluators (``evaluate_model``), plus ``fitness``.

``evaluate_model`` builds the evaluators a model's tasks need (``build_evaluators``: detection mAP,
segmentation mIoU, data summary, and with ``save_predictions`` the COCO files and sample overlays) and hands
them to ``inference_on_dataset``, which knows nothing about any of them (``reset / process(batch, outputs) /
evaluate``, ``mtkd.eval.evaluator``). Predictions and ground truth are compared in original image pixels
(``mtkd.eval.batch``, ``mtkd.eval.outputs``).

The ``mtkd eval`` command lives in ``mtkd.eval.cli`` (``main`` is re-exported here for the CLI registry).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtkd.data.collate import images_to_float
from mtkd.errors import CompatibilityError
from mtkd.eval.batch import SourceIndex, real_count
from mtkd.eval.detection import DetectionEvaluator
from mtkd.eval.evaluator import DatasetEvaluator, DatasetEvaluators
from mtkd.eval.outputs import EvalOutputs
from mtkd.eval.overlays import SampleOverlayEvaluator
from mtkd.eval.segmentation import SegmentationEvaluator
from mtkd.eval.summary import DataSummaryEvaluator
from mtkd.utils.dist import rank_and_world

N_SAMPLES = 4  # sample overlays written with save_predictions (the report shows them)


def fitness(metrics: dict[str, Any], w_det: float = 0.5, w_seg: float = 0.5) -> float:
    """Best-checkpoint score: ``w_det * mAP50_95 + w_seg * mIoU``, weights renormalized over the tasks present
    (a det-only model scores its mAP; several seg tasks count with their mean mIoU); a ``None`` metric counts 0."""
    parts = []
    if "det" in metrics:
        parts.append((w_det, metrics["det"].get("mAP50_95") or 0.0))
    seg = [v.get("mIoU") or 0.0 for k, v in metrics.items() if k == "seg" or str(k).startswith("seg/")]
    if seg:  # several seg tasks: their mean mIoU
        parts.append((w_seg, sum(seg) / len(seg)))
    total = sum(w for w, _ in parts)
    return float(sum(w * v for w, v in parts) / total) if total > 0 else 0.0


def _check_seg_tasks(model: nn.Module, spec: Any) -> list[Any]:
    """The dataset's seg tasks (``SegTask``) a several-task model is evaluated on; ``CompatibilityError`` when the
    model's tasks or their classes differ from the dataset's."""
    have = {t: list(n) for t, n in getattr(model, "seg_tasks", {}).items()}
    want = {t: st.names for t, st in spec.seg_tasks.items()}
    if have and (list(have) != list(want) or any(len(have[t]) != len(want[t]) for t in want)):
        raise CompatibilityError(
            f"model has seg tasks { {t: len(n) for t, n in have.items()} } (classes per task) but {spec.yaml_path} "
            f"lists { {t: len(n) for t, n in want.items()} }"
        )
    return [spec.seg_tasks[t] for t in have]


def _check_classes(model: nn.Module, spec: Any) -> tuple[int, int]:
    nc_det = int(getattr(model, "nc_det", len(spec.det_names)))
    if spec.multi_seg or getattr(model, "multi_seg", False):
        if len(spec.det_names) != nc_det and nc_det:
            raise CompatibilityError(
                f"model has {nc_det} detection classes but {spec.yaml_path} lists {len(spec.det_names)}"
            )
        return nc_det, 0
    nc_seg = int(getattr(model, "nc_seg", len(spec.seg_names)))
    for task, n, names in (("detection", nc_det, spec.det_names), ("segmentation", nc_seg, spec.seg_names)):
        if n and n != len(names):
            raise CompatibilityError(
                f"model has {n} {task} classes but {spec.yaml_path} lists {len(names)}: {names}"
            )
    return nc_det, nc_seg


def build_evaluators(
    model: nn.Module,
    spec: Any,
    *,
    split: str | None = None,
    seg_resolution: str = "input",
    save_predictions: str | os.PathLike | None = None,
    n_samples: int = N_SAMPLES,
) -> DatasetEvaluators:
    """The evaluators for ``model``'s tasks, in this order: ``det`` / ``seg`` (when the model has that task;
    ``spec`` gives the class names), sample overlays (with ``save_predictions``, which also receives the COCO
    files) and the ``data`` summary (``split``, ``seg_resolution``, images counted)."""
    nc_det, nc_seg = _check_classes(model, spec)
    evs: list[DatasetEvaluator] = []
    if nc_det:
        evs.append(DetectionEvaluator(spec.det_names, output_dir=save_predictions))
    if nc_seg:
        evs.append(SegmentationEvaluator(len(spec.seg_names), spec.ignore_index, spec.seg_names))
    elif spec.multi_seg or getattr(model, "multi_seg", False):  # one evaluator per seg task
        for st in _check_seg_tasks(model, spec):
            evs.append(
                SegmentationEvaluator(st.nc, spec.ignore_index, st.names, task=st.name, lines=st.lines)
            )
    if save_predictions is not None:
        samples = Path(save_predictions) / "samples"
        evs.append(
            SampleOverlayEvaluator(
                samples,
                n_samples,
                det=bool(nc_det),
                det_names=spec.det_names,
                ignore_index=spec.ignore_index,
                seg_tasks=list(spec.seg_tasks) if spec.multi_seg else None,
            )
        )
    return DatasetEvaluators([*evs, DataSummaryEvaluator(split, seg_resolution=seg_resolution)])


def evaluate_model(
    model: nn.Module,
    loader: Any,
    *,
    spec: Any,
    device: str | torch.device = "cpu",
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    save_predictions: str | os.PathLike | None = None,
    progress: bool = True,
    n_samples: int = N_SAMPLES,
) -> dict[str, Any]:
    """Evaluate ``model`` on every batch of ``loader`` (``build_dataloader(..., augment=False)``).

    Args:
        model: a ``MultiTaskAdapter`` (or its DDP wrapper: its module is evaluated, no collectives).
        spec: the loader's ``DataSpec`` (class names, ignore index).
        conf, iou, max_det: ``postprocess_det`` settings (COCO then scores the top 100 per image).
        save_predictions: folder receiving ``predictions.json`` + ``ground_truth.json`` (COCO, original
            pixels) and ``samples/<stem>_gt.png`` / ``samples/<stem>.png`` overlays of the first ``n_samples``
            images (written on rank 0).

    Returns:
        ``{"det": {...}, "seg": {...}, "data": {"split", "images", "seg_resolution"}}`` (DESIGN.md §4; a task
        the model lacks is absent). Under DDP all ranks return the same metrics.
    """
    model = getattr(model, "module", model)
    dataset = getattr(loader, "dataset", None)
    source = SourceIndex(dataset)
    evaluator = build_evaluators(
        model,
        spec,
        split=getattr(dataset, "split", None),
        seg_resolution="original" if source.available else "input",
        save_predictions=save_predictions,
        n_samples=n_samples,
    )
    return inference_on_dataset(
        model,
        loader,
        evaluator,
        device=device,
        conf=conf,
        iou=iou,
        max_det=max_det,
        progress=progress,
        source=source,
    )


def inference_on_dataset(
    model: nn.Module,
    loader: Any,
    evaluator: DatasetEvaluator,
    *,
    device: str | torch.device = "cpu",
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    progress: bool = True,
    source: SourceIndex | None = None,
) -> dict[str, Any]:
    """Run ``model`` (eval mode, its previous mode restored afterwards) over ``loader`` and return
    ``evaluator.evaluate()``. Each batch reaches ``evaluator.process(batch, outputs)`` with the raw samples of
    ``source`` (default: the loader's dataset's) attached and ``n_real`` (under a ``DistributedSampler``: the
    repeated samples excluded); ``conf``, ``iou``, ``max_det`` configure ``EvalOutputs.dets``."""
    from tqdm import tqdm

    source = source if source is not None else SourceIndex(getattr(loader, "dataset", None))
    rank, world = rank_and_world()
    n_real = real_count(loader, rank, world)
    evaluator.reset()
    was_training = model.training
    model.eval().to(device)
    seen = 0
    try:
        with torch.inference_mode():  # the model was moved above, outside: no inference-mode parameters
            for batch in tqdm(loader, desc="eval", disable=not progress or rank != 0, leave=False):
                images = images_to_float(batch["images"].to(device, non_blocking=True))
                keep = len(images) if n_real is None else max(0, min(len(images), n_real - seen))
                batch = source.attach(batch, keep)
                evaluator.process(
                    batch, EvalOutputs(model(images), batch, conf=conf, iou=iou, max_det=max_det)
                )
                seen += len(images)
    finally:
        model.train(was_training)
    return evaluator.evaluate()


def main(argv: list[str]) -> int:
    """``mtkd eval`` (see ``mtkd.eval.cli``)."""
    from mtkd.eval.cli import main as cli_main

    return cli_main(argv)
