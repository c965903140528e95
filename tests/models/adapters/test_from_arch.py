"""Architecture round trips through safe checkpoints, Ultralytics checkpoints (trust_pickle), SMP/Ultralytics
config errors, and teacher/student compatibility with these adapters."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mtkd.checkpoint import model_state, save_checkpoint
from mtkd.errors import CheckpointError, CompatibilityError, ConfigError
from mtkd.models.build import build_model, load_model
from mtkd.models.compat import check_compatible

IMGSZ = 64


def _same_outputs(a, b, x):
    with torch.no_grad():
        oa, ob = a.eval()(x), b.eval()(x)
    for t in ("seg",):
        if getattr(oa, t) is not None:
            torch.testing.assert_close(getattr(oa, t), getattr(ob, t))
    if oa.det is not None:
        torch.testing.assert_close(oa.det.box, ob.det.box)
        torch.testing.assert_close(oa.det.cls, ob.det.cls)


@pytest.mark.parametrize(
    "case",
    [
        "ultralytics_det_seghead",
        "ultralytics_semantic",
        "smp",
        "composite_ultralytics_smp",
        "generic_yolop_anchor",
    ],
)
def test_arch_round_trip_through_safe_checkpoint(case, build_case, tmp_path):
    model = build_case(case)
    state = model_state(model)
    assert json.loads(json.dumps(state["arch"])) == state["arch"]  # JSON-like only
    path = save_checkpoint({"model": state}, tmp_path / "model.pt")
    torch.manual_seed(123)  # the rebuilt model's random init differs; the loaded weights must win
    targets = [t for t in (state["arch"].get("target"),) if t]  # generic: the file names code to import
    if targets:
        with pytest.raises(CheckpointError, match="--trust-code"):
            load_model(path)
    loaded = load_model(path, trust_code=targets)
    assert type(loaded) is type(model) and loaded.arch() == state["arch"]
    assert loaded.det_spec() == model.det_spec() and loaded.seg_names == model.seg_names
    _same_outputs(model, loaded, torch.rand(1, 3, IMGSZ, IMGSZ))


def test_composite_prefixes_features_and_state(build_case):
    model = build_case("composite_ultralytics_smp")
    assert model.feature_names() == ["det.p3", "det.p4", "det.p5", "seg.enc", "seg.dec"]
    assert all(k.startswith(("det.", "seg.")) for k in model.state_dict())
    out = model(torch.rand(1, 3, IMGSZ, IMGSZ), features=["det.p4", "seg.enc"])
    assert set(out.features) == {"det.p4", "seg.enc"}
    with pytest.raises(ConfigError, match=r"prefix the member's name with 'det.' or 'seg.'"):
        model(torch.rand(1, 3, IMGSZ, IMGSZ), features=["p3"])


# ---------------------------------------------------------------------------------------------- ultralytics
@pytest.fixture(scope="module")
def ultra_ckpt(tmp_path_factory):
    """An Ultralytics checkpoint saved the way Ultralytics does: a pickled half-precision module under 'model'."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    det = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    det.names = {0: "car", 1: "person"}
    path = tmp_path_factory.mktemp("ultra") / "best.pt"
    torch.save({"epoch": -1, "model": copy.deepcopy(det).half(), "ema": None, "train_args": {}}, path)
    return path, det.half().float().eval()


def test_ultralytics_checkpoint_requires_trust_pickle(ultra_ckpt):
    path, _ = ultra_ckpt
    with pytest.raises(ConfigError, match=r"field 'weights'.*pickled.*trust_pickle: true"):
        build_model({"adapter": "ultralytics", "weights": str(path)}, nc_det=2, nc_seg=0)


def test_ultralytics_checkpoint_loads_with_names_and_weights(ultra_ckpt, tmp_path):
    path, ref = ultra_ckpt
    model = build_model(
        {"adapter": "ultralytics", "weights": str(path), "trust_pickle": True}, nc_det=2, nc_seg=3
    ).eval()
    assert model.nc_seg == 3 and model.seg is not None  # our seg head on its neck
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        out = model(x)
        _, raw = ref(x)
    torch.testing.assert_close(out.det.box, raw["boxes"].transpose(1, 2))
    torch.testing.assert_close(out.det.cls, raw["scores"].transpose(1, 2))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # converted once (trusted unpickling), then it travels as a safe checkpoint
    safe = save_checkpoint({"model": model_state(model)}, tmp_path / "safe.pt")
    _same_outputs(model, load_model(safe), x)
    with pytest.raises(ConfigError, match=r"checkpoint's head has 2 classes, but nc_det = 5"):
        build_model(
            {"adapter": "ultralytics", "weights": str(path), "trust_pickle": True}, nc_det=5, nc_seg=0
        )


def test_ultralytics_names_from_checkpoint_when_not_given(ultra_ckpt):
    from mtkd.models.adapters.ultralytics import build

    path, _ = ultra_ckpt
    model = build({"adapter": "ultralytics", "weights": str(path), "trust_pickle": True})
    assert model.det_names == ["car", "person"] and model.seg is None and model.det_spec().reg_max == 16


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"model": "yolov8n-cls.yaml"}, r"a 'classify' model YAML; expected a detect or semantic model"),
        (
            {"model": "no_such_model_v0n.yaml"},
            r"field 'model' = 'no_such_model_v0n.yaml': not a readable model YAML",
        ),
        ({"model": "yolov8n.yaml", "weights": "x.pt"}, r"exactly one of 'model'.*or 'weights'"),
        ({"model": "yolov8n.yaml", "seghead": {}}, r"unknown field 'seghead' \(did you mean 'seg_head'\?\)"),
    ],
)
def test_ultralytics_config_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        build_model({"adapter": "ultralytics", **config}, nc_det=2, nc_seg=0)


# ---------------------------------------------------------------------------------------------- smp
def test_smp_refuses_downloads_and_loads_local_weights(tmp_path):
    base = {
        "adapter": "smp",
        "arch": "FPN",
        "encoder_name": "tu-mobilenetv3_small_050",
        "kwargs": {"decoder_dropout": 0.0},
    }
    with pytest.raises(
        ConfigError, match=r"field 'encoder_weights' = 'imagenet'.*never downloads.*state_dict"
    ):
        build_model({**base, "encoder_weights": "imagenet"}, nc_det=0, nc_seg=3)
    with pytest.raises(ConfigError, match=r"smp.create_model\(arch='Unett'"):
        build_model({**base, "arch": "Unett"}, nc_det=0, nc_seg=3)
    torch.manual_seed(0)
    src = build_model(base, nc_det=0, nc_seg=3).eval()
    torch.save(src.model.state_dict(), tmp_path / "fpn.pt")  # a plain SMP state_dict, as users save it
    loaded = build_model({**base, "state_dict": str(tmp_path / "fpn.pt")}, nc_det=0, nc_seg=3)
    assert loaded.det_spec() is None and loaded.nc_det == 0
    _same_outputs(src, loaded, torch.rand(1, 3, IMGSZ, IMGSZ))


# ---------------------------------------------------------------------------------------------- compatibility
def test_check_compatible_with_adapters(build_case):
    teacher = build_case("composite_ultralytics_smp")  # anchor-free (DFL 16) det + 4-class seg
    good = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head="anchor_free")
    check_compatible(teacher, good)  # no error
    with pytest.raises(CompatibilityError, match=r"det head kind: teacher 'anchor_free' vs student 'anchor'"):
        check_compatible(teacher, build_model("yolo_mt_n", nc_det=3, nc_seg=4, head="anchor"))
    with pytest.raises(CompatibilityError, match=r"seg classes: teacher 4 vs student 5"):
        check_compatible(teacher, build_model("yolo_mt_n", nc_det=3, nc_seg=5, head="anchor_free"))
    yolop = build_case("generic_yolop_anchor")  # YOLOP anchors differ from the built-in defaults
    with pytest.raises(CompatibilityError, match=r"det anchors"):
        check_compatible(yolop, build_model("yolo_mt_n", nc_det=3, nc_seg=2, head="anchor"))
    with pytest.raises(CompatibilityError, match=r"det head: teacher None vs student 'anchor_free'"):
        check_compatible(build_case("smp"), good)
