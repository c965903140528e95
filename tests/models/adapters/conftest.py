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

#: several seg tasks (YOLOP's drivable area + lane lines), each a 2-channel output of the toy models
TASKS = {"drivable": ["background", "drivable"], "lane": ["background", "lane"]}
_YOLOP_TWO_TASKS = {
    **{k: v for k, v in GENERIC_YOLOP.items() if k not in ("freeze", "seg_activation")},
    "outputs": {
        "det": 0,
        "drivable": {"index": 1, "activation": "sigmoid"},
        "lane": {"index": 2, "activation": "sigmoid"},
    },
}
#: multi-task case name -> (config, nc_det); built with ``seg_tasks=TASKS``. Adapters without multi-task support
#: (``MULTI_UNSUPPORTED``) must refuse ``seg_tasks`` with a one-line reason.
MULTI_CASES: dict[str, tuple[dict, int]] = {
    "native_two_task": ({"adapter": "native", "name": "yolo_mt_n"}, NC_DET),
    "native_two_task_anchor_free": (
        {"adapter": "native", "name": "yolo_mt_n", "head": "anchor_free"},
        NC_DET,
    ),
    "generic_yolop_two_task": (_YOLOP_TWO_TASKS, NC_DET),
    "composite_one_member_per_task": (
        {
            "adapter": "composite",
            "det": {**GENERIC_YOLOP, "outputs": {"det": 0}, "freeze": ["drive", "lane"]},
            "seg": {
                "drivable": {
                    **GENERIC_YOLOP,
                    "outputs": {"seg": 1},
                    "eval_outputs": {},
                    "freeze": ["det", "lane"],
                },
                "lane": {
                    **GENERIC_ANCHOR_FREE,
                    "kwargs": {"nc": 1, "nc_seg": 2, "reg_max": 4},
                    "outputs": {"seg": "seg"},
                    "freeze": ["head", "backbone.p4", "backbone.p5"],  # only the det head reads P4/P5
                },
            },
        },
        NC_DET,
    ),
    "composite_two_task_member": (
        {
            "adapter": "composite",
            "det": {**GENERIC_ANCHOR_FREE, "outputs": {"det": "det"}, "freeze": ["seg"]},
            "seg": {
                **_YOLOP_TWO_TASKS,
                "outputs": {k: v for k, v in _YOLOP_TWO_TASKS["outputs"].items() if k != "det"},
                "eval_outputs": {},
                "freeze": ["det"],
            },
        },
        NC_DET,
    ),
}
MULTI_UNSUPPORTED = {"smp": SMP_SEG, "ultralytics": ULTRA_DET}


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


@pytest.fixture
def build_multi_case(toys):
    """``build_multi_case(name)`` -> a fresh multi-task adapter (``seg_tasks=TASKS``) via ``build_model``, seeded."""
    import torch

    from mtkd.models.build import build_model

    def make(name: str):
        config, nc_det = MULTI_CASES[name]
        torch.manual_seed(0)
        return build_model(config, nc_det=nc_det, seg_tasks=TASKS)

    return make


@pytest.fixture
def multi_cases() -> dict[str, tuple[dict, int]]:
    """``MULTI_CASES``: multi-task case name -> (config, nc_det)."""
    return MULTI_CASES


@pytest.fixture(params=list(MULTI_CASES))
def multi_case(request) -> str:
    """Every multi-task case name."""
    return request.param


@pytest.fixture
def unsupported_multi_adapters() -> dict[str, dict]:
    """``MULTI_UNSUPPORTED``: adapter name -> a config, for the adapters without several seg tasks."""
    return MULTI_UNSUPPORTED


@pytest.fixture(params=list(MULTI_UNSUPPORTED))
def unsupported_multi(request) -> tuple[str, dict]:
    """(adapter name, config) of every adapter that does not support several seg tasks."""
    return request.param, MULTI_UNSUPPORTED[request.param]


@pytest.fixture
def multi_tasks() -> dict[str, list[str]]:
    """``TASKS``, the seg tasks the multi-task cases are built with."""
    return TASKS
