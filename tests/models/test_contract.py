"""Contract of every built-in model (scales x head kinds, and pruned variants): shapes, dtypes, raw det
outputs in train and eval mode, finite values, and a backward pass that reaches every trainable parameter."""

from __future__ import annotations

import math

import pytest
import torch

from mtkd.models import DetOutput, MultiTaskOutput, build_model
from mtkd.models.adapters.base import MultiTaskAdapter

HEADS = ("anchor", "anchor_free")
NC_DET, NC_SEG, SIZE = 3, 4, 64
CELLS = sum((SIZE // s) ** 2 for s in (8, 16, 32))  # 64 + 16 + 4 positions at 64 px


def check_output(model: MultiTaskAdapter, out: MultiTaskOutput, b: int) -> None:
    assert isinstance(out, MultiTaskOutput)
    assert out["seg"] is out.seg and set(out) == {"seg", "det"}
    assert out.seg.shape == (b, NC_SEG, SIZE, SIZE) and out.seg.dtype == torch.float32
    det = out.det
    assert isinstance(det, DetOutput) and det.strides == (8, 16, 32)
    spec = model.det_spec()
    assert det.kind == spec.kind and det.num_classes == NC_DET == spec.num_classes
    if det.kind == "anchor":
        na = 3
        assert det.box.shape == (b, na * CELLS, 4) and det.obj.shape == (b, na * CELLS)
        assert [tuple(r.shape) for r in det.raw] == [
            (b, na, SIZE // s, SIZE // s, 5 + NC_DET) for s in (8, 16, 32)
        ]
        assert det.anchors.shape == (3, na, 2) and det.reg_max is None
        assert torch.equal(det.obj[:, 0], det.raw[0][:, 0, 0, 0, 4])  # flat view is level/anchor/y/x ordered
    else:
        assert det.box.shape == (b, CELLS, 4 * 16) and det.obj is None and det.reg_max == 16
        assert det.raw["boxes"].shape == (b, 64, CELLS) and det.raw["scores"].shape == (b, NC_DET, CELLS)
        assert [tuple(f.shape[-2:]) for f in det.raw["feats"]] == [(SIZE // s,) * 2 for s in (8, 16, 32)]
    assert det.cls.shape[:2] == det.box.shape[:2] and det.cls.shape[-1] == NC_DET
    for t in (out.seg, det.box, det.cls, det.obj):
        if t is not None:
            assert t.dtype == torch.float32 and torch.isfinite(t).all()


def check_backward(model: MultiTaskAdapter) -> None:
    model.train()
    out = model(torch.rand(2, 3, SIZE, SIZE))
    loss = out.seg.mean() + out.det.box.mean() + out.det.cls.mean()
    if out.det.obj is not None:
        loss = loss + out.det.obj.mean()
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


SCALES = ("n", "s", "m")


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("scale", SCALES)
def test_contract(scale, head):
    torch.manual_seed(0)
    model = build_model(f"yolo_mt_{scale}", nc_det=NC_DET, nc_seg=NC_SEG, head=head)
    x = torch.rand(2, 3, SIZE, SIZE)
    check_output(model, model.train()(x), 2)
    with torch.no_grad():
        check_output(model, model.eval()(x), 2)  # eval mode also returns RAW det outputs
    check_backward(model)


def test_scale_sizes():
    """Parameter counts grow with the scale and stay small (CPU-trainable)."""
    counts = {
        s: sum(p.numel() for p in build_model(f"yolo_mt_{s}", nc_det=3, nc_seg=4).parameters()) for s in "nsm"
    }
    assert 0.3e6 < counts["n"] < 0.8e6 and 1e6 < counts["s"] < 3e6 and counts["m"] > counts["s"]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("scale", SCALES)
def test_contract_pruned(scale, head, pruned_factory):
    n0, model = pruned_factory(scale, head)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * n0
    with torch.no_grad():
        check_output(model, model.eval()(torch.rand(2, 3, SIZE, SIZE)), 2)
    model.zero_grad()
    check_backward(model)
    model.zero_grad()


def test_bias_priors():
    """Anchor head objectness/class biases start at YOLOv5 priors (few objects), anchor-free at Detect's."""
    m = build_model("yolo_mt_n", nc_det=NC_DET, nc_seg=NC_SEG, head="anchor")
    b = m.det.m[0].bias.view(3, -1)
    assert torch.allclose(b[:, 4], torch.full((3,), math.log(8 / (640 / 8) ** 2)))
    m = build_model("yolo_mt_n", nc_det=NC_DET, nc_seg=NC_SEG, head="anchor_free")
    assert torch.allclose(m.det.cv3[0][-1].bias, torch.full((NC_DET,), math.log(5 / NC_DET / (640 / 8) ** 2)))


def test_anchor_free_small_box_prior():
    """Initial DFL distances are ~1.5 cells per side (small objects on small inputs), not Ultralytics' 7.5."""
    m = build_model("yolo_mt_n", nc_det=NC_DET, nc_seg=NC_SEG, head="anchor_free")
    p = m.det.cv2[0][-1].bias.view(4, 16).softmax(1)
    expected = (p * torch.arange(16.0)).sum(1)
    r = math.exp(-0.5)
    assert torch.allclose(
        expected, torch.full((4,), r / (1 - r)), atol=0.01
    )  # geometric mean, truncated at 16
