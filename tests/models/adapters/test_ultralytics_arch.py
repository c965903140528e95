"""The ``ultralytics`` adapter's arch holds pruned widths as validated plain data; head kind and feature taps."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mtkd.errors import CheckpointError, ConfigError
from mtkd.models import build_from_arch, build_model
from mtkd.prune.prune import prune_model

IMGSZ = 64
V8 = {"adapter": "ultralytics", "model": "yolov8n.yaml"}


pytestmark = pytest.mark.usefixtures("one_thread")  # larger models: tests/conftest.py


@pytest.fixture(scope="module")
def pruned_v8():
    torch.manual_seed(0)
    model = build_model(V8, nc_det=3, nc_seg=4)
    return prune_model(model, ratio=0.3, imgsz=IMGSZ)


def test_unpruned_arch_is_unchanged_by_the_new_fields():
    arch = build_model(V8, nc_det=3, nc_seg=4).arch()
    # no new fields for an unpruned model: checkpoints written before them stay identical
    assert set(arch) == {"adapter", "yaml", "det_names", "seg_names", "seg_head"}


def test_pruned_arch_round_trips_exactly(pruned_v8):
    arch = pruned_v8.arch()
    assert json.loads(json.dumps(arch)) == arch  # plain data
    assert arch["split_free"] == [f"model.model.{i}" for i in (2, 4, 6, 8, 12, 15, 18, 21)]
    stem = pruned_v8.layers[0].conv
    assert arch["widths"]["model.model.0.conv"] == [3, stem.out_channels, 1] and stem.out_channels < 16
    assert all(isinstance(v, int) for w in arch["widths"].values() for v in w)
    rebuilt = build_from_arch(arch)
    rebuilt.load_state_dict(pruned_v8.state_dict())  # strict: every key and shape matches
    assert rebuilt.arch() == arch
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    pruned_v8.eval(), rebuilt.eval()
    with torch.no_grad():
        a, b = pruned_v8(x), rebuilt(x)
    assert (
        torch.equal(a.seg, b.seg) and torch.equal(a.det.box, b.det.box) and torch.equal(a.det.cls, b.det.cls)
    )


def test_arch_without_its_widths_does_not_rebuild_the_pruned_model(pruned_v8):
    arch = pruned_v8.arch()
    del arch["widths"]
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_from_arch(arch).load_state_dict(pruned_v8.state_dict())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (
            "widths",
            {"model.model.0.conv": [3, 8, True]},
            r"widths.model.model.0.conv' = \[3, 8, True\]; expected",
        ),
        ("widths", {"model.model.0.conv": [3, -8, 1]}, r"expected a list of positive integers"),
        ("widths", {"model.model.0.conv": [3, 8]}, r"a Conv2d takes \[in_channels, out_channels, groups\]"),
        ("widths", {"model.model.0.bn": [3, 8, 1]}, r"a BatchNorm2d takes \[num_features\]"),
        ("widths", {"model.model.0.conv": [3, 8, 3]}, r"groups must divide"),
        ("widths", {"model.model.0": [8]}, r"has Conv there; expected a Conv2d, BatchNorm2d or Linear"),
        ("widths", {"model.model.99.conv": [8]}, r"has no such layer there"),
        ("widths", {"model.__class__": [8]}, r"key 'model.__class__' is not a module path"),
        ("widths", {"os.system('x')": [8]}, r"is not a module path"),
        ("widths", [["model.model.0.conv", 3, 8, 1]], r"field 'widths' must be a mapping"),
        ("split_free", ["model.model.0"], r"'model.model.0' is Conv, not a splitting Ultralytics block"),
        ("split_free", "model.model.2", r"field 'split_free' must be a list of module paths"),
        ("split_free", ["__import__('os')"], r"field 'split_free' must be a list of module paths"),
    ],
)
def test_arch_fields_are_validated(field, value, match):
    arch = build_model(V8, nc_det=3, nc_seg=0).arch()
    arch[field] = value
    with pytest.raises(ConfigError, match=match):
        build_from_arch(copy.deepcopy(arch), where="evil.pt")


def test_non_width_changes_cannot_be_described(build_case):
    model = build_case("ultralytics_det_seghead")
    stem = model.model.model[0]
    # a kernel size, not a width, differs from the YAML
    stem.conv = torch.nn.Conv2d(3, 16, 5, 2, 2, bias=False)
    with pytest.raises(CheckpointError, match=r"no longer matches.*Only channel widths"):
        model.arch()


def test_torch_pruning_c2f_v2_layout_is_recognised():
    """A foreign class with Torch-Pruning's ``C2f_v2`` layout (``cv0``/``cv1``/``cv2``/``m``) is described by
    ``split_free`` (it is what a user's pruning script leaves in the model)."""
    from mtkd.models.adapters.ultralytics_blocks import C2fSplitFree, split_free_paths

    model = build_model(V8, nc_det=3, nc_seg=0)
    expected = build_model(V8, nc_det=3, nc_seg=0)
    expected.load_state_dict(model.state_dict())
    from mtkd.models.adapters.ultralytics_blocks import make_split_free

    make_split_free(model)
    make_split_free(expected)
    foreign = type("C2f_v2", (torch.nn.Module,), {"forward": C2fSplitFree.forward})
    block = model.layers[2]
    user = foreign()
    for name in ("cv0", "cv1", "cv2", "m"):
        setattr(user, name, getattr(block, name))
    for attr in ("f", "i", "type", "np"):
        setattr(user, attr, getattr(block, attr))
    model.layers[2] = user
    assert "model.model.2" in split_free_paths(model)
    rebuilt = build_from_arch(model.arch())
    rebuilt.load_state_dict(model.state_dict())
    assert type(rebuilt.layers[2]) is C2fSplitFree


# ---------------------------------------------------------------------------------------------- head kind, taps
def test_head_kind_is_inferred_not_taken_from_the_default_head_argument():
    """``tools/train.py`` passes its default ``head=anchor``; an Ultralytics model's head kind comes from the model."""
    model = build_model(V8, nc_det=3, nc_seg=0, head="anchor")
    assert model.det_spec().kind == "anchor_free"
    with pytest.raises(
        ConfigError, match=r"field 'head' = 'anchor', but this model's detection head is 'anchor_free'"
    ):
        build_model({**V8, "head": "anchor"}, nc_det=3, nc_seg=0)  # written in the model config: checked
    composite = {
        "adapter": "composite",
        "det": V8,
        "seg": {"adapter": "ultralytics", "model": "yolo26n-sem.yaml"},
    }
    assert build_model(composite, nc_det=3, nc_seg=2, head="anchor").det_spec().kind == "anchor_free"
    assert build_model("yolo_mt_n", nc_det=3, nc_seg=2, head="anchor").det_spec().kind == "anchor"


@pytest.mark.parametrize(
    ("yaml", "nc_det", "names", "strides"),
    [
        ("yolov8n-p2.yaml", 3, ["p2", "p3", "p4", "p5"], [4, 8, 16, 32]),
        ("yolov8n.yaml", 3, ["p3", "p4", "p5"], [8, 16, 32]),
        ("yolo26n-sem.yaml", 0, ["p3", "p4"], [8, 16]),
    ],
)
def test_feature_taps_are_named_by_stride(yaml, nc_det, names, strides):
    model = build_model({"adapter": "ultralytics", "model": yaml}, nc_det=nc_det, nc_seg=2).eval()
    assert model.feature_names() == names
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 128), features=names)
    assert [128 // out.features[n].shape[-1] for n in names] == strides
