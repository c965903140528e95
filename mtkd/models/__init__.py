"""Models: the built-in ``yolo_mt`` family, adapters for other families, entry points and helpers.

Public API (see docs/INTERFACES.md "Models")::

    build_model(name_or_config, *, nc_det, nc_seg, head, det_names, seg_names, **kw) -> MultiTaskAdapter
    build_from_arch(arch) -> MultiTaskAdapter          model_state(model) -> {"arch", "state_dict"}
    load_model(path_or_ckpt, map_location="cpu")       check_compatible(teacher, student)
    postprocess_det(det, img_hw, ...)                  postprocess_seg(seg_logits, img_hw)
    prune_ignored_layers(model)                        prune_output_transform(out)

Attributes are imported on first access, so ``import mtkd.models`` does not import Ultralytics.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "build_model": "mtkd.models.build",
    "build_from_arch": "mtkd.models.build",
    "model_state": "mtkd.checkpoint",
    "load_model": "mtkd.models.build",
    "check_compatible": "mtkd.models.compat",
    "postprocess_det": "mtkd.models.postprocess",
    "postprocess_seg": "mtkd.models.postprocess",
    "prune_ignored_layers": "mtkd.models.yolo_mt",
    "prune_output_transform": "mtkd.models.yolo_mt",
    "FeatureTaps": "mtkd.models.features",
    "MultiTaskOutput": "mtkd.models.outputs",
    "DetOutput": "mtkd.models.outputs",
    "MultiTaskAdapter": "mtkd.models.adapters.base",
    "DetSpec": "mtkd.models.adapters.base",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mtkd.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
