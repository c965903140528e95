"""Adapter test fixtures: tiny configs for every non-native adapter, and the toy models on ``sys.path``."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
IMGSZ = 64
NC_DET, NC_SEG = 3, 4

YOLOP_ANCHORS = [[3, 9, 5, 11, 4, 20], [7, 18, 6, 39, 12, 31], [19, 50, 38, 81, 68, 157]]
SMP_SEG = {
    "adapter": "smp",
    "arch": "Unet",
    "encoder_name": "tu-resnet10t",  # timm encoder: unused stages are dropped, so every parameter is used
    "kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
}
ULTRA_DET = {"adapter": "ultralytics", "model": "yolov8n.yaml"}
GENERIC_YOLOP = {
    "adapter": "generic",
    "target": "mtkd_adapter_toys:YoloPLike",
    "kwargs": {"nc": NC_DET},
    "outputs": {"det": 0, "seg": 1},  # seg = the drivable-area head (2-channel sigmoid)
    "eval_outputs": {"det": [0, 1]},  # YOLOP's Detect returns (decoded, raw) in eval mode
    "head": "anchor",
    "strides": [8, 16, 32],
    "anchors": YOLOP_ANCHORS,
    "seg_activation": "sigmoid",
    "features": {"p3": "backbone.stem", "p4": "backbone.p4", "p5": "backbone.p5"},
    "freeze": ["lane"],  # the lane-line head's output is not mapped
}
GENERIC_ANCHOR_FREE = {
    "adapter": "generic",
    "target": "mtkd_adapter_toys:AnchorFreeToy",
    "kwargs": {"nc": NC_DET, "nc_seg": NC_SEG, "reg_max": 4},
    "outputs": {"det": "det", "seg": "seg"},
    "head": "anchor_free",
    "strides": [8, 16, 32],
    "reg_max": 4,
    "seg_activation": "softmax",
}

#: case name -> (config, nc_det, nc_seg)
CASES: dict[str, tuple[dict, int, int]] = {
    "ultralytics_det_seghead": (ULTRA_DET, NC_DET, NC_SEG),
    "ultralytics_e2e_seghead": ({"adapter": "ultralytics", "model": "yolo26n.yaml"}, NC_DET, NC_SEG),
    "ultralytics_semantic": ({"adapter": "ultralytics", "model": "yolo26n-sem.yaml"}, 0, NC_SEG),
    "smp": (SMP_SEG, 0, NC_SEG),
    "composite_ultralytics_smp": ({"adapter": "composite", "det": ULTRA_DET, "seg": SMP_SEG}, NC_DET, NC_SEG),
    "generic_yolop_anchor": (GENERIC_YOLOP, NC_DET, 2),
    "generic_anchor_free": (GENERIC_ANCHOR_FREE, NC_DET, NC_SEG),
}


@pytest.fixture(scope="session")
def toys():
    """The ``mtkd_adapter_toys`` module, importable by name (so ``target: mtkd_adapter_toys:...`` works)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(HERE))
        import mtkd_adapter_toys

        yield mtkd_adapter_toys


@pytest.fixture
def adapter_cases() -> dict[str, tuple[dict, int, int]]:
    """``CASES``: case name -> (config, nc_det, nc_seg)."""
    return CASES


@pytest.fixture
def imgsz() -> int:
    return IMGSZ


@pytest.fixture(params=list(CASES))
def case(request) -> str:
    """Every adapter case name (tests that take ``case`` run once per case)."""
    return request.param


@pytest.fixture
def case_adapter_name():
    return lambda name: CASES[name][0]["adapter"]


@pytest.fixture
def build_case(toys):
    """``build_case(name)`` -> a fresh adapter built through ``mtkd.models.build_model``, seeded."""
    import torch

    from mtkd.models.build import build_model

    def make(name: str):
        config, nc_det, nc_seg = CASES[name]
        torch.manual_seed(0)
        return build_model(config, nc_det=nc_det, nc_seg=nc_seg)

    return make
