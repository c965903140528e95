"""Entry points: build by name/config with clear errors, arch round trip, safe checkpoints via load_model."""

from __future__ import annotations

import json

import pytest
import torch

from mtkd.checkpoint import save_checkpoint
from mtkd.errors import CheckpointError, ConfigError
from mtkd.models import build_from_arch, build_model, load_model, model_state


def test_build_by_name_and_config():
    m = build_model("yolo_mt_n", nc_det=2, nc_seg=3)
    assert m.adapter_name == "native" and m.det_spec().kind == "anchor"
    assert m.det_names == ["class0", "class1"] and m.nc_seg == 3
    m = build_model(
        {"adapter": "native", "name": "yolo_mt_n", "reg_max": 8},
        head="anchor_free",
        det_names=["a"],
        seg_names=["bg", "a"],
    )
    assert m.det_spec().kind == "anchor_free" and m.det_spec().reg_max == 8 and m.det_names == ["a"]
    m = build_model(
        {"adapter": "native", "scale": "n", "head": "anchor"}, head="anchor_free", nc_det=1, nc_seg=2
    )
    assert m.det_spec().kind == "anchor"  # the config's own head wins


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        (("yolo_mt_x",), {}, r"unknown model name 'yolo_mt_x'.*did you mean"),
        (({"adapter": "nativ"},), {}, r"unknown adapter 'nativ'.*did you mean 'native'"),
        (({"name": "yolo_mt_n"},), {}, r"missing key 'adapter'"),
        (
            ({"adapter": "native", "name": "yolo_mt_n", "haed": "anchor"},),
            {},
            r"unknown field 'haed'.*'head'",
        ),
        (("yolo_mt_n",), {"head": "anchorfree"}, r"'head' must be one of.*did you mean 'anchor_free'"),
        (("yolo_mt_n",), {"anchors": [[1, 2]]}, r"'anchors'"),
        (("yolo_mt_n",), {"nc_det": 3, "det_names": ["a"]}, r"nc_det=3 but 1 det_names"),
        (("yolo_mt_n",), {"nc_det": 0}, r"at least one detection class"),
    ],
)
def test_build_errors(args, kw, match):
    kw = {"nc_det": 2, "nc_seg": 2, **kw}
    with pytest.raises(ConfigError, match=match):
        build_model(*args, **kw)


def test_build_requires_class_counts():
    with pytest.raises(ConfigError, match="nc_det"):
        build_model("yolo_mt_n", nc_seg=2)


def test_arch_roundtrip_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        "yolo_mt_n", head="anchor_free", det_names=["a", "b"], seg_names=["bg", "a", "b"]
    ).eval()
    state = model_state(model)
    assert json.loads(json.dumps(state["arch"])) == state["arch"]
    path = save_checkpoint(
        {"model": state, "names": {"det": model.det_names, "seg": model.seg_names}}, tmp_path / "m.pt"
    )
    raw = torch.load(path, weights_only=True)  # no pickled code
    assert raw["model"]["arch"]["adapter"] == "native"
    x = torch.rand(1, 3, 64, 64)
    for loaded in (load_model(path), load_model(raw)):
        assert not loaded.training or loaded.eval()
        loaded.eval()
        with torch.no_grad():
            a, b = model(x), loaded(x)
        assert torch.equal(a.seg, b.seg) and torch.equal(a.det.cls, b.det.cls)
        assert loaded.det_names == ["a", "b"] and loaded.arch() == model.arch()
    assert type(build_from_arch(state["arch"])) is type(model)


def test_load_model_errors(tmp_path):
    model = build_model("yolo_mt_n", nc_det=2, nc_seg=2)
    state = model_state(model)
    bad = dict(state["state_dict"])
    key = "backbone.stem.conv.weight"
    bad[key] = torch.zeros(1, 3, 3, 3)
    with pytest.raises(
        CheckpointError, match=r"backbone\.stem\.conv\.weight.*\(1, 3, 3, 3\).*\(8, 3, 3, 3\)"
    ):
        load_model({"model": {"arch": state["arch"], "state_dict": bad}})
    bad = {k: v for k, v in state["state_dict"].items() if k != key}
    with pytest.raises(CheckpointError, match="lacks key 'backbone.stem.conv.weight'"):
        load_model({"model": {"arch": state["arch"], "state_dict": bad}})
    with pytest.raises(CheckpointError, match="unknown adapter 'mystery'"):
        load_model({"model": {"arch": {**state["arch"], "adapter": "mystery"}, "state_dict": {}}})
    torch.save(model, tmp_path / "pickled.pt")  # a pickled module is refused, with the convert hint
    with pytest.raises(CheckpointError, match="convert"):
        load_model(tmp_path / "pickled.pt")
