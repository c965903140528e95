"""Generic adapter: YOLOP-like model (sigmoid seg, anchor det), import-path construction from a state_dict file,
and the error messages users see (probability → logit conversions: ``test_output_map.py``)."""

from __future__ import annotations

import pytest
import torch

from mtkd.errors import CheckpointError, ConfigError
from mtkd.models.adapters.det_layouts import anchor_det_output
from mtkd.models.adapters.generic import GenericAdapter, build

IMGSZ = 64


def _yolop_config(**over):
    cfg = {
        "adapter": "generic",
        "target": "mtkd_adapter_toys:YoloPLike",
        "kwargs": {"nc": 2},
        "outputs": {"det": 0, "seg": 2},  # seg = lane-line head this time
        "eval_outputs": {"det": [0, 1]},
        "head": "anchor",
        "strides": [8, 16, 32],
        "anchors": [[3, 9, 5, 11, 4, 20], [7, 18, 6, 39, 12, 31], [19, 50, 38, 81, 68, 157]],
        "seg_activation": "sigmoid",
        "freeze": ["drive"],
    }
    cfg.update(over)
    return cfg


# ------------------------------------------------------------------------------------------ YOLOP-like model
def test_yolop_like_outputs_are_mapped_exactly(toys):
    torch.manual_seed(0)
    net = toys.YoloPLike(nc=2)
    adapter = GenericAdapter(
        net, det_names=["car", "person"], seg_names=["bg", "lane"], outputs={"det": 0, "seg": 2},
        eval_outputs={"det": [0, 1]}, head="anchor", strides=[8, 16, 32],
        anchors=[[[3, 9], [5, 11], [4, 20]], [[7, 18], [6, 39], [12, 31]], [[19, 50], [38, 81], [68, 157]]],
        seg_activation="sigmoid", freeze=["drive"],
    )  # fmt: skip
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    for train in (True, False):
        adapter.train(train)
        with torch.no_grad():
            out = adapter(x)
            ref_det, _, ref_lane = net(x)
        levels = ref_det if train else ref_det[1]
        # seg: the lane head's sigmoid probabilities turned back into logits
        torch.testing.assert_close(torch.sigmoid(out.seg), ref_lane, atol=1e-6, rtol=1e-5)
        # det: raw levels untouched; flat index (level 1, anchor 2, y 1, x 3) -> offset 3*8*8 + (2*4 + 1)*4 + 3
        for a, b in zip(out.det.raw, levels):
            assert torch.equal(a, b)
        i = 3 * 8 * 8 + (2 * 4 + 1) * 4 + 3
        assert torch.equal(out.det.box[:, i], levels[1][:, 2, 1, 3, :4])
        assert torch.equal(out.det.obj[:, i], levels[1][:, 2, 1, 3, 4])
        assert torch.equal(out.det.cls[:, i], levels[1][:, 2, 1, 3, 5:])
    assert out.det.anchors.tolist()[2][1] == [38.0, 81.0]
    spec = adapter.det_spec()
    assert spec.kind == "anchor" and spec.num_classes == 2 and spec.anchors[0][0] == (3.0, 9.0)
    assert not any(p.requires_grad for p in net.drive.parameters())


def test_flat_and_nested_anchors_and_map_layout_agree(toys):
    """YOLOv5-style flat anchors == nested pairs; ``[B, na*(5+nc), H, W]`` maps == 5-D levels."""
    a = build(_yolop_config(), nc_det=2, nc_seg=2)
    nested = [[[3, 9], [5, 11], [4, 20]], [[7, 18], [6, 39], [12, 31]], [[19, 50], [38, 81], [68, 157]]]
    b = build(_yolop_config(anchors=nested), nc_det=2, nc_seg=2)
    assert a.det_spec() == b.det_spec()
    levels = [torch.randn(2, 3, s, s, 7) for s in (8, 4, 2)]
    maps = [t.permute(0, 1, 4, 2, 3).reshape(2, 21, t.shape[2], t.shape[3]) for t in levels]
    d1 = anchor_det_output(levels, strides=(8, 16, 32), anchors=a.anchors, nc=2, where="t")
    d2 = anchor_det_output(maps, strides=(8, 16, 32), anchors=a.anchors, nc=2, where="t")
    assert torch.equal(d1.box, d2.box) and torch.equal(d1.obj, d2.obj) and torch.equal(d1.cls, d2.cls)


def test_single_channel_sigmoid_becomes_two_classes():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.Sigmoid())
    adapter = GenericAdapter(net, seg_names=["bg", "road"], outputs={"seg": []}, seg_activation="sigmoid")
    x = torch.rand(1, 3, 32, 32)
    out = adapter(x)
    assert out.det is None and out.seg.shape == (1, 2, 32, 32)
    p = net(x)
    torch.testing.assert_close(torch.softmax(out.seg, 1), torch.cat([1 - p, p], 1), atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ import path + weights
def test_import_path_with_state_dict_file(toys, tmp_path):
    torch.manual_seed(1)
    net = toys.YoloPLike(nc=2).eval()
    path = tmp_path / "yolop.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)  # how many training scripts save
    adapter = build(
        _yolop_config(state_dict=str(path), state_dict_key="state_dict"), nc_det=2, nc_seg=2
    ).eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        out = adapter(x)
        ref = net(x)
    torch.testing.assert_close(torch.sigmoid(out.seg), ref[2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.det.raw[0], ref[0][1][0])
    arch = adapter.arch()
    assert arch["target"] == "mtkd_adapter_toys:YoloPLike" and "state_dict" not in arch


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"target": "no_such_pkg_xyz.models:Net"}, r"field 'target'.*cannot import 'no_such_pkg_xyz.models'"),
        ({"target": "mtkd_adapter_toys:NoSuchNet"}, r"field 'target'.*no attribute 'NoSuchNet'"),
        ({"target": "mtkd_adapter_toys.YoloPLike"}, r"field 'target'.*expected 'package.module:Class'"),
        ({"kwargs": {"nc": 2, "depth_multiple": 3}}, r"field 'kwargs'.*could not be built"),
        ({"outputs": {"det": 0, "sge": 1}}, r"field 'outputs'"),
        ({"head": "anchors"}, r"field 'head' = 'anchors'"),
        ({"anchors": [[3, 9, 5, 11]]}, r"field 'anchors'"),
        ({"seg_activation": "tanh"}, r"field 'seg_activation'"),
        ({"freeze": ["lane_head"]}, r"field 'freeze'.*no submodule 'lane_head'"),
        ({"stride": [8, 16, 32]}, r"unknown field 'stride' \(did you mean 'strides'\?\)"),
    ],
)
def test_config_errors_name_the_field(toys, over, match):
    with pytest.raises(ConfigError, match=match):
        build(_yolop_config(**over), nc_det=2, nc_seg=2)


def test_state_dict_errors_name_the_file(toys, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=r"nope.pt: field 'state_dict': file not found"):
        build(_yolop_config(state_dict=str(missing)), nc_det=2, nc_seg=2)
    wrong = tmp_path / "wrong.pt"
    torch.save(toys.YoloPLike(nc=5).state_dict(), wrong)  # 5 classes: det conv shapes differ
    with pytest.raises(
        CheckpointError, match=r"wrong.pt: .*shape mismatch \(e.g. det.0.weight \(30, 16, 1, 1\)"
    ):
        build(_yolop_config(state_dict=str(wrong)), nc_det=2, nc_seg=2)
    pickled = tmp_path / "pickled.pt"
    torch.save(toys.YoloPLike(nc=2), pickled)  # a whole pickled module: refused, never unpickled
    with pytest.raises(CheckpointError, match=r"pickled.pt: .*weights_only=True"):
        build(_yolop_config(state_dict=str(pickled)), nc_det=2, nc_seg=2)
    nested = tmp_path / "nested.pt"
    torch.save({"model": toys.YoloPLike(nc=2).state_dict()}, nested)
    with pytest.raises(CheckpointError, match=r"state_dict_key"):
        build(_yolop_config(state_dict=str(nested)), nc_det=2, nc_seg=2)


def test_forward_errors_name_the_mismatch(toys):
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with pytest.raises(ConfigError, match=r"'outputs.seg' = 7: step 0 \(7\) not found"):
        build(_yolop_config(outputs={"det": 0, "seg": 7}), nc_det=2, nc_seg=2)(x)
    with pytest.raises(
        ConfigError, match=r"level 0 has shape \[1, 3, 8, 8, 7\]; expected \[B, na=3, H, W, 5 \+ nc_det=8\]"
    ):
        build(_yolop_config(), nc_det=3, nc_seg=2)(x)  # the model has 2 classes
    with pytest.raises(ConfigError, match=r"seg output has 2 channels but seg_names has 3"):
        build(_yolop_config(), nc_det=2, nc_seg=3)(x)
    # eval mode without eval_outputs: YOLOP's (decoded, raw) tuple is not a list of levels
    model = build(_yolop_config(eval_outputs=None), nc_det=2, nc_seg=2).eval()
    with pytest.raises(
        ConfigError, match=r"'eval_outputs.det' selects a tuple of 2 items.*need 'eval_outputs'"
    ):
        model(x)


def test_arch_needs_an_import_path_and_matching_widths(toys):
    adapter = GenericAdapter(
        toys.YoloPLike(nc=2), seg_names=["bg", "lane"], outputs={"seg": 2}, seg_activation="sigmoid"
    )
    with pytest.raises(ConfigError, match=r"passed in from Python without 'target'"):
        adapter.arch()
    # the live module is wider than what target(**kwargs) builds (like a pruned model): refused, not saved
    wide = GenericAdapter(
        toys.YoloPLike(nc=2, width=16), seg_names=["bg", "lane"], outputs={"seg": 2}, seg_activation="sigmoid",
        target="mtkd_adapter_toys:YoloPLike", kwargs={"nc": 2},
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"no longer matches its architecture description"):
        wide.arch()


def test_feature_taps_by_short_name_and_module_path(toys):
    model = build(_yolop_config(features={"p3": "backbone.stem"}), nc_det=2, nc_seg=2)
    out = model(torch.rand(1, 3, IMGSZ, IMGSZ), features=["p3", "backbone.p5"])
    assert out.features["p3"].shape == (1, 16, 8, 8) and out.features["backbone.p5"].shape == (1, 64, 2, 2)
    with pytest.raises(ConfigError, match=r"unknown feature name 'p9'"):
        model(torch.rand(1, 3, IMGSZ, IMGSZ), features=["p9"])


def test_input_normalization(toys):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    plain = build(_yolop_config(), nc_det=2, nc_seg=2).eval()
    normed = build(_yolop_config(input_mean=mean, input_std=std), nc_det=2, nc_seg=2).eval()
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normed(x).seg, plain((x - m) / s).seg)
    assert normed.arch()["input_std"] == pytest.approx(std)


def test_head_is_the_one_name_and_legacy_det_kind_still_reads(toys):
    from mtkd.models.build import build_model

    cfg = {k: v for k, v in _yolop_config().items() if k != "head"}
    assert build_model(cfg, nc_det=2, nc_seg=2, head="anchor").det_spec().kind == "anchor"
    legacy = {**cfg, "det_kind": "anchor"}  # configs and checkpoints written before mtkd 0.2
    model = build_model(legacy, nc_det=2, nc_seg=2)
    assert (
        model.det_spec().kind == "anchor"
        and model.arch()["head"] == "anchor"
        and "det_kind" not in model.arch()
    )
    with pytest.raises(
        ConfigError, match=r"field 'head' = 'anchor_free', but this model's detection head is 'anchor'"
    ):
        build_model(legacy, nc_det=2, nc_seg=2, head="anchor_free")
