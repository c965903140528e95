"""One anchor format for ``native`` and ``generic``: YOLOv5's flat lists per level and nested ``[w, h]`` pairs are
both accepted (``det_layouts.normalize_anchors``), the arch holds the nested form, and malformed anchors are one
line naming the field."""

from __future__ import annotations

import pytest
import torch

from mtkd.checkpoint import model_state, save_checkpoint
from mtkd.errors import ConfigError
from mtkd.models.adapters.generic import build as build_generic
from mtkd.models.build import build_model, load_model

FLAT = [[3, 9, 5, 11, 4, 20], [7, 18, 6, 39, 12, 31], [19, 50, 38, 81, 68, 157]]
NESTED = [[[3, 9], [5, 11], [4, 20]], [[7, 18], [6, 39], [12, 31]], [[19, 50], [38, 81], [68, 157]]]
BAD = [
    [[3, 9, 5]] * 3,  # odd number of values
    FLAT[:2],  # 2 levels, 3 strides
    [[3, 9, 5, 11], [7, 18], [19, 50, 38, 81]],  # different anchor counts per level
    [[[3, 9, 1]], [[7, 18, 1]], [[19, 50, 1]]],  # nested "pairs" of 3
    [[[3, 9], 5, 11], [7, 18, 6, 39], [19, 50, 38, 81]],  # flat and nested mixed in one level
    [["3", 9], [7, 18], [19, 50]],  # not numbers
    [[True, 9], [7, 18], [19, 50]],  # bools are not sizes
    [[-3, 9], [7, 18], [19, 50]],  # negative
    [[0, 9], [7, 18], [19, 50]],  # zero
    "3,9",
]


def _generic(anchors):
    cfg = {
        "adapter": "generic", "target": "mtkd_adapter_toys:YoloPLike", "kwargs": {"nc": 2},
        "outputs": {"det": 0, "seg": 1}, "eval_outputs": {"det": [0, 1]}, "head": "anchor",
        "strides": [8, 16, 32], "anchors": anchors, "seg_activation": "sigmoid", "freeze": ["lane"],
    }  # fmt: skip
    return build_generic(cfg, nc_det=2, nc_seg=2)


def _native(anchors):
    return build_model("yolo_mt_n", nc_det=2, nc_seg=2, anchors=anchors)


@pytest.mark.parametrize("build", [_native, _generic], ids=["native", "generic"])
def test_flat_and_nested_anchors_build_the_same_model(toys, build, tmp_path):
    flat, nested = build(FLAT), build(NESTED)
    assert flat.det_spec() == nested.det_spec()
    assert flat.det_spec().anchors[2][1] == (38.0, 81.0)
    assert flat.arch()["anchors"] == NESTED  # the arch holds the nested form (what older mtkd reads)
    path = save_checkpoint({"model": model_state(flat)}, tmp_path / "m.pt")
    loaded = load_model(path, trust_code=True)
    assert loaded.det_spec() == flat.det_spec()


def test_native_arch_with_flat_anchors_loads():
    arch = {**_native(NESTED).arch(), "anchors": FLAT}
    from mtkd.models.adapters.native import from_arch

    assert from_arch(arch).det_spec() == _native(NESTED).det_spec()


@pytest.mark.parametrize("build", [_native, _generic], ids=["native", "generic"])
@pytest.mark.parametrize("bad", BAD, ids=range(len(BAD)))
def test_malformed_anchors_are_one_line_naming_the_field(toys, build, bad):
    with pytest.raises(ConfigError, match=r"field 'anchors' = ") as e:
        build(bad)
    assert "\n" not in str(e.value)


def test_native_default_anchors_when_none():
    model = _native(None)
    assert torch.tensor(model.det_spec().anchors).shape[0] == 3
