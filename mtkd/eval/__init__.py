"""Evaluation: COCO mAP, dataset-level mIoU, speed and size (``reset / process / evaluate`` evaluators)."""

from mtkd.eval.detection import DetectionEvaluator, to_coco_json
from mtkd.eval.segmentation import SegmentationEvaluator

__all__ = ["DetectionEvaluator", "SegmentationEvaluator", "to_coco_json"]
