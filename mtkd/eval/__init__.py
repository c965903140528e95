"""Evaluation: COCO mAP, dataset-level mIoU, sample overlays, speed and size.

Every evaluator follows one protocol (``reset / process(batch, outputs) / evaluate``, ``mtkd.eval.evaluator``);
``DatasetEvaluators`` combines several. ``evaluate_model`` / ``inference_on_dataset`` / ``fitness`` live in
``mtkd.eval.evaluate`` (the driver the trainer and ``mtkd eval`` use).
"""

from mtkd.eval.detection import DetectionEvaluator, to_coco_json
from mtkd.eval.evaluator import DatasetEvaluator, DatasetEvaluators
from mtkd.eval.outputs import EvalOutputs
from mtkd.eval.overlays import SampleOverlayEvaluator, draw_sample
from mtkd.eval.segmentation import SegmentationEvaluator
from mtkd.eval.summary import DataSummaryEvaluator

__all__ = [
    "DataSummaryEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "DetectionEvaluator",
    "EvalOutputs",
    "SampleOverlayEvaluator",
    "SegmentationEvaluator",
    "draw_sample",
    "to_coco_json",
]
