"""Datasets: descriptors, the ``yolo_mask`` and ``coco`` readers, transforms, loaders, validator, shapes generator.

Public names are re-exported lazily (importing ``mtkd.data`` imports neither torch nor albumentations).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataSpec": "mtkd.data.descriptor",
    "CocoSplit": "mtkd.data.descriptor",
    "load_data_yaml": "mtkd.data.descriptor",
    "RawSample": "mtkd.data.samples",
    "Problem": "mtkd.data.samples",
    "SampleError": "mtkd.data.samples",
    "AugmentParams": "mtkd.data.transforms",
    "JointTransform": "mtkd.data.transforms",
    "letterbox_geometry": "mtkd.data.transforms",
    "collate": "mtkd.data.collate",
    "MultiTaskDataset": "mtkd.data.build",
    "MtkdDataLoader": "mtkd.data.build",
    "build_dataset": "mtkd.data.build",
    "build_dataloader": "mtkd.data.build",
    "CheckReport": "mtkd.data.check",
    "check_dataset": "mtkd.data.check",
    "make_shapes": "mtkd.data.shapes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtkd.data' has no attribute '{name}'")
