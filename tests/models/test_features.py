"""Named feature taps: short names and module paths, unknown names, no hooks left behind."""

from __future__ import annotations

import pytest
import torch

from mtkd.errors import ConfigError
from mtkd.models import FeatureTaps, build_model


@pytest.fixture(scope="module")
def model():
    return build_model("yolo_mt_n", nc_det=3, nc_seg=4)


def hooks(m: torch.nn.Module) -> int:
    return sum(len(x._forward_hooks) for x in m.modules())


def test_short_names_give_neck_outputs(model):
    assert {"p3", "p4", "p5"} <= set(model.feature_names())
    out = model(torch.rand(2, 3, 64, 64), features=("p3", "p4", "p5"))
    assert list(out.features) == ["p3", "p4", "p5"]
    ch = [
        model.neck.p3.cv3.conv.out_channels,
        model.neck.p4.cv3.conv.out_channels,
        model.neck.p5.cv3.conv.out_channels,
    ]
    assert [tuple(f.shape) for f in out.features.values()] == [
        (2, c, 64 // s, 64 // s) for c, s in zip(ch, (8, 16, 32))
    ]
    assert out.features["p3"].requires_grad  # attached to the graph: feature KD can train the student
    assert hooks(model) == 0
    assert model(torch.rand(1, 3, 64, 64)).features == {}


def test_module_path_and_equivalence(model):
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, features=["p3", "neck.p3", "backbone.sppf"])
        p3 = model.neck(model.backbone(x))[0]
    assert torch.equal(out.features["p3"], out.features["neck.p3"]) and torch.equal(out.features["p3"], p3)
    assert out.features["backbone.sppf"].shape[-1] == 2


def test_unknown_name_lists_available(model):
    with pytest.raises(ConfigError, match=r"unknown feature name 'p6'.*p3, p4, p5"):
        model(torch.rand(1, 3, 64, 64), features=["p6"])
    assert hooks(model) == 0


def test_hooks_removed_when_forward_raises(model):
    taps = FeatureTaps(model, {"p3": "neck.p3"})
    with pytest.raises(RuntimeError), taps.capture(["p3"]):
        assert hooks(model) == 1
        raise RuntimeError("boom")
    assert hooks(model) == 0
