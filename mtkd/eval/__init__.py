"""Evaluation: COCO mAP, dataset-level mIoU, speed and size (``reset / process / evaluate`` evaluators).

``evaluate_model`` / ``fitness`` live in ``mtkd.eval.evaluate`` (the driver the trainer and ``mtkd eval`` use).
"""

from mtkd.eval.detection import DetectionEvaluator, to_coco_json
from mtkd.eval.segmentation import SegmentationEvaluator

__all__ = ["DetectionEvaluator", "SegmentationEvaluator", "to_coco_json"]
