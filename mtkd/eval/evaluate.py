"""Evaluation driver: run a model over a split and feed both evaluators (``evaluate_model``), plus ``fitness``.

Coordinates: the loader yields letterboxed images ``[B, 3, S, S]``. Predictions are mapped back to the
**original** image — boxes: ``(x - left) / scale`` (clipped); segmentation logits: letterbox padding cropped,
resized bilinearly to ``(H0, W0)``, then argmax — and compared with the original-resolution ground truth read
from the dataset files (``dataset.source[i]``: mask, boxes, labels as stored). When a dataset exposes no raw
source, the batch's boxes are mapped back the same way and masks are compared at input resolution
(``data.seg_resolution`` in the result says which).

The ``mtkd eval`` command lives in ``mtkd.eval.cli`` (``main`` is re-exported here for the CLI registry).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.errors import CompatibilityError
from mtkd.eval.detection import DetectionEvaluator
from mtkd.eval.dist import gather_objects, rank_and_world
from mtkd.eval.segmentation import SegmentationEvaluator
from mtkd.utils.atomic import write_bytes

N_SAMPLES = 4  # sample overlays written with save_predictions (the report shows them)
SAMPLE_CONF = 0.25  # score threshold of the boxes drawn on sample overlays (not used for mAP)


def fitness(metrics: dict[str, Any], w_det: float = 0.5, w_seg: float = 0.5) -> float:
    """Best-checkpoint score: ``w_det * mAP50_95 + w_seg * mIoU``, weights renormalized over the tasks present
    (a det-only model scores its mAP); a ``None`` metric counts 0."""
    parts = []
    if "det" in metrics:
        parts.append((w_det, metrics["det"].get("mAP50_95") or 0.0))
    if "seg" in metrics:
        parts.append((w_seg, metrics["seg"].get("mIoU") or 0.0))
    total = sum(w for w, _ in parts)
    return float(sum(w * v for w, v in parts) / total) if total > 0 else 0.0


@dataclass(frozen=True)
class Letterbox:
    """Letterbox of one image: original size, padding ``(top, left)`` and scale (input = original * scale)."""

    h0: int
    w0: int
    top: int
    left: int
    scale: float

    @classmethod
    def from_batch(cls, batch: dict[str, Any], i: int) -> Letterbox:
        h0, w0 = (int(v) for v in batch["orig_sizes"][i])
        top, left = (round(float(v)) for v in batch["pads"][i])
        return cls(h0, w0, top, left, float(batch["scales"][i]))

    def boxes_to_original(self, b: Tensor) -> Tensor:
        """``[N, 4]`` xyxy input pixels → original pixels, clipped to the image."""
        out = (b.float() - b.new_tensor([self.left, self.top, self.left, self.top]).float()) / self.scale
        out[:, 0::2] = out[:, 0::2].clamp(0, self.w0)
        out[:, 1::2] = out[:, 1::2].clamp(0, self.h0)
        return out

    def crop(self, x: Tensor) -> Tensor:
        """The un-padded region ``[..., nh, nw]`` of an input-resolution map ``[..., S, S]``."""
        nh, nw = max(1, round(self.h0 * self.scale)), max(1, round(self.w0 * self.scale))
        return x[..., self.top : self.top + nh, self.left : self.left + nw]

    def seg_to_original(self, logits: Tensor, hw: tuple[int, int]) -> Tensor:
        """``[C, h, w]`` logits of the letterboxed input ``hw`` → ``[H0, W0]`` int64 class map."""
        x = logits[None].float()
        if tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        return F.interpolate(self.crop(x), size=(self.h0, self.w0), mode="bilinear", align_corners=False)[0].argmax(0)


class _RawAccess:
    """Original-resolution ground truth by image path, from ``dataset.source`` (``paths`` and ``[i]`` →
    sample with ``image``, ``mask``, ``boxes``, ``labels``) when the dataset has one."""

    def __init__(self, dataset: Any) -> None:
        src = getattr(dataset, "source", None)
        paths = getattr(src, "paths", None) if src is not None else None
        self.src = src if paths is not None else None
        self.index = {str(p): i for i, p in enumerate(paths or [])}

    def get(self, path: str) -> Any | None:
        i = self.index.get(str(path)) if self.src is not None else None
        return None if i is None else self.src[i]


def _real_count(loader: Any, rank: int, world: int) -> int | None:
    """Non-padding samples of this rank under a ``DistributedSampler`` (which repeats samples so the split
    divides by the world size; the repeats sit at the end of each rank's share); ``None`` if not sharded."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if world <= 1 or not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    return len(range(rank, len(loader.dataset), world))


def _check_classes(model: nn.Module, spec: Any) -> tuple[int, int]:
    nc_det = int(getattr(model, "nc_det", len(spec.det_names)))
    nc_seg = int(getattr(model, "nc_seg", len(spec.seg_names)))
    for task, n, names in (("detection", nc_det, spec.det_names), ("segmentation", nc_seg, spec.seg_names)):
        if n and n != len(names):
            raise CompatibilityError(f"model has {n} {task} classes but {spec.yaml_path} lists {len(names)}: {names}")
    return nc_det, nc_seg


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
        model: a ``MultiTaskAdapter``; run in eval mode, its previous mode restored afterwards.
        spec: the loader's ``DataSpec`` (class names, ignore index).
        conf, iou, max_det: ``postprocess_det`` settings (COCO then scores the top 100 per image).
        save_predictions: folder receiving ``predictions.json`` + ``ground_truth.json`` (COCO, original
            pixels) and ``samples/<stem>_gt.png`` / ``samples/<stem>.png`` overlays of the first ``n_samples``
            images (written on rank 0).

    Returns:
        ``{"det": {...}, "seg": {...}, "data": {"split", "images", "seg_resolution"}}`` (DESIGN.md §4; a task
        the model lacks is absent). Under DDP all ranks return the same metrics.
    """
    from tqdm import tqdm

    from mtkd.models.postprocess import postprocess_det, postprocess_seg

    model = getattr(model, "module", model)  # evaluate a DDP-wrapped model's module (no collectives)
    nc_det, nc_seg = _check_classes(model, spec)
    det_ev = DetectionEvaluator(spec.det_names) if nc_det else None
    seg_ev = SegmentationEvaluator(len(spec.seg_names), spec.ignore_index, spec.seg_names) if nc_seg else None
    rank, world = rank_and_world()
    n_real = _real_count(loader, rank, world)
    raw = _RawAccess(getattr(loader, "dataset", None))
    sample_dir = Path(save_predictions) / "samples" if save_predictions is not None and rank == 0 else None
    was_training = model.training
    model.eval().to(device)
    seen = 0
    try:
        with torch.inference_mode():  # the model was moved above, outside: no inference-mode parameters
            for batch in tqdm(loader, desc="eval", disable=not progress or rank != 0, leave=False):
                images = batch["images"].to(device, non_blocking=True).float()
                hw = (int(images.shape[-2]), int(images.shape[-1]))
                out = model(images)
                dets = (postprocess_det(out.det, hw, conf=conf, iou=iou, max_det=max_det)
                        if det_ev is not None and out.det is not None else None)
                seg_in = (postprocess_seg(out.seg, hw)
                          if seg_ev is not None and out.seg is not None and raw.src is None else None)
                keep = len(images) if n_real is None else max(0, min(len(images), n_real - seen))
                preds, targets = [], []
                for i in range(keep):
                    lb, path = Letterbox.from_batch(batch, i), str(batch["paths"][i])
                    rs = raw.get(path)
                    if det_ev is not None:
                        preds.append(_pred_to_original(dets[i] if dets is not None else None, lb))
                        targets.append(_target(batch, i, lb, rs, path))
                    mask = None
                    if seg_ev is not None and out.seg is not None:
                        mask = _process_seg(seg_ev, out.seg[i], seg_in, batch, i, lb, hw, rs)
                    if sample_dir is not None and seen + i < n_samples:
                        if mask is None and out.seg is not None:
                            mask = lb.seg_to_original(out.seg[i], hw)
                        _save_sample(sample_dir, batch, i, lb, preds[-1] if preds else None, mask, rs, spec)
                if det_ev is not None:
                    det_ev.process(preds, targets)
                seen += len(images)
    finally:
        model.train(was_training)
    metrics: dict[str, Any] = {}
    if det_ev is not None:
        metrics.update(det_ev.evaluate())
        if save_predictions is not None and rank == 0:
            det_ev.save_json(save_predictions)
    if seg_ev is not None:
        metrics.update(seg_ev.evaluate())
    n_images = sum(gather_objects(seen if n_real is None else min(seen, n_real)))
    metrics["data"] = {"split": getattr(getattr(loader, "dataset", None), "split", None), "images": n_images,
                       "seg_resolution": "original" if raw.src is not None else "input"}
    return metrics


def _pred_to_original(d: dict[str, Tensor] | None, lb: Letterbox) -> dict[str, Tensor]:
    """One image's ``postprocess_det`` output (input pixels, any device) → CPU tensors in original pixels."""
    if d is None or len(d["boxes"]) == 0:
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    return {"boxes": lb.boxes_to_original(d["boxes"].cpu()), "scores": d["scores"].float().cpu(),
            "labels": d["labels"].long().cpu()}


def _process_seg(ev: SegmentationEvaluator, logits: Tensor, seg_in: Tensor | None, batch: dict[str, Any],
                 i: int, lb: Letterbox, hw: tuple[int, int], raw: Any) -> Tensor | None:
    """Feed image ``i`` to ``ev``: at original resolution against the file's mask when ``raw`` is given
    (returns the ``[H0, W0]`` prediction), else at input resolution against the batch mask (padding is
    ``ignore_index`` there; returns ``None``)."""
    if raw is not None:
        mask = lb.seg_to_original(logits, hw)
        ev.process(mask, torch.from_numpy(np.array(raw.mask, dtype=np.int64)).to(mask.device))
        return mask
    ev.process(seg_in[i], batch["masks"][i].to(seg_in.device))
    return None


def _target(batch: dict[str, Any], i: int, lb: Letterbox, raw: Any, path: str) -> dict[str, Any]:
    """Ground truth of image ``i`` in original pixels: from the files when ``raw`` is given, else the batch's
    boxes mapped back."""
    if raw is not None:
        boxes, labels = torch.as_tensor(np.asarray(raw.boxes, dtype=np.float64)).reshape(-1, 4), raw.labels
    else:
        sel = batch["batch_idx"] == i
        boxes, labels = lb.boxes_to_original(batch["boxes"][sel]), batch["labels"][sel]
    return {"boxes": boxes, "labels": torch.as_tensor(np.asarray(labels)).long(), "image_size": (lb.h0, lb.w0),
            "path": path}


def _save_sample(out_dir: Path, batch: dict[str, Any], i: int, lb: Letterbox, pred: dict[str, Any] | None,
                 mask: Tensor | None, raw: Any, spec: Any) -> None:
    """Write ``<stem>_gt.png`` (ground truth) and ``<stem>.png`` (prediction) at original resolution."""
    from mtkd.report.plots import draw_sample

    if raw is not None:
        image, gt_mask, gt_boxes, gt_labels = raw.image, raw.mask, raw.boxes, raw.labels
    else:  # no raw source: crop the letterbox padding of the batch and resize back
        img = F.interpolate(lb.crop(batch["images"][i].float())[None], size=(lb.h0, lb.w0), mode="bilinear")[0]
        image = (img.permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
        m = lb.crop(batch["masks"][i])[None, None].float()
        gt_mask = F.interpolate(m, size=(lb.h0, lb.w0), mode="nearest")[0, 0].long().cpu().numpy()
        sel = batch["batch_idx"] == i
        gt_boxes, gt_labels = lb.boxes_to_original(batch["boxes"][sel]).numpy(), batch["labels"][sel].numpy()
    stem = Path(str(batch["paths"][i])).stem
    common = dict(det_names=list(spec.det_names), ignore_index=spec.ignore_index)
    write_bytes(out_dir / f"{stem}_gt.png", what="sample overlay", data=draw_sample(
        np.asarray(image), boxes=np.asarray(gt_boxes), labels=np.asarray(gt_labels), mask=np.asarray(gt_mask),
        **common))
    kw: dict[str, Any] = {}
    if pred is not None:
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        keep = scores >= SAMPLE_CONF
        kw = dict(boxes=np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)[keep],
                  labels=np.asarray(pred["labels"]).reshape(-1)[keep], scores=scores[keep])
    write_bytes(out_dir / f"{stem}.png", what="sample overlay", data=draw_sample(
        np.asarray(image), mask=None if mask is None else mask.cpu().numpy(), **kw, **common))


def main(argv: list[str]) -> int:
    """``mtkd eval`` (see ``mtkd.eval.cli``)."""
    from mtkd.eval.cli import main as cli_main

    return cli_main(argv)
