"""Contract tests over every non-native adapter and head kind (timm-style: forward, shapes, backward)."""

from __future__ import annotations

import torch

from mtkd.losses.task import TaskLoss
from mtkd.models.adapters.base import MultiTaskAdapter
from mtkd.models.outputs import MultiTaskOutput

B = 2
IMGSZ = 64  # the conftest's imgsz


def _batch(model: MultiTaskAdapter) -> dict[str, torch.Tensor]:
    """Two boxes on image 0, one on image 1 (xyxy pixels), random masks with an ignored border."""
    masks = torch.randint(0, max(model.nc_seg, 1), (B, IMGSZ, IMGSZ))
    masks[:, :2] = 255
    nc = max(model.nc_det, 1)
    return {
        "images": torch.rand(B, 3, IMGSZ, IMGSZ),
        "masks": masks,
        "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 60.0, 50.0], [0.0, 10.0, 16.0, 26.0]]),
        "labels": torch.tensor([0, nc - 1, 1 % nc]),
        "batch_idx": torch.tensor([0, 0, 1]),
    }


def _expected_positions(spec) -> int:
    """Number of anchors/positions A for an IMGSZ x IMGSZ input: sum over levels of na * (IMGSZ / s) ** 2."""
    na = len(spec.anchors[0]) if spec.kind == "anchor" else 1
    return sum(na * (IMGSZ // s) ** 2 for s in spec.strides)


def _check_output(model: MultiTaskAdapter, out: MultiTaskOutput) -> None:
    assert isinstance(out, MultiTaskOutput)
    if model.nc_seg:
        assert out.seg is not None and out.seg.dtype == torch.float32
        assert tuple(out.seg.shape) == (B, model.nc_seg, IMGSZ, IMGSZ)
        assert torch.isfinite(out.seg).all()
    else:
        assert out.seg is None
    spec = model.det_spec()
    if spec is None:
        assert out.det is None and model.nc_det == 0
        return
    det = out.det
    assert det is not None and det.kind == spec.kind and tuple(det.strides) == tuple(spec.strides)
    a = _expected_positions(spec)
    d_box = 4 if spec.kind == "anchor" else 4 * spec.reg_max
    assert tuple(det.box.shape) == (B, a, d_box)
    assert (
        tuple(det.cls.shape) == (B, a, model.nc_det) and det.num_classes == spec.num_classes == model.nc_det
    )
    if spec.kind == "anchor":
        assert tuple(det.obj.shape) == (B, a)
        assert tuple(det.anchors.shape) == (len(spec.strides), len(spec.anchors[0]), 2)
        assert isinstance(det.raw, list) and all(r.ndim == 5 for r in det.raw)
    else:
        assert det.obj is None and det.reg_max == spec.reg_max
        assert set(det.raw) >= {"boxes", "scores"}
    for t in (det.box, det.cls) + ((det.obj,) if det.obj is not None else ()):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_adapter_contract(case, build_case, case_adapter_name, imgsz):
    assert imgsz == IMGSZ
    model = build_case(case)
    assert isinstance(model, MultiTaskAdapter)
    assert model.adapter_name == case_adapter_name(case)
    images = torch.rand(B, 3, IMGSZ, IMGSZ)
    names = model.feature_names()  # may be empty for a generic adapter configured without 'features'

    # eval mode: raw (not decoded) outputs, same layout as in training
    model.eval()
    with torch.no_grad():
        _check_output(model, model(images))

    # train mode: shapes + every trainable parameter receives a finite gradient
    model.train()
    out = model(images, features=names)
    _check_output(model, out)
    assert set(out.features) == set(names)
    assert all(isinstance(f, torch.Tensor) and f.shape[0] == B for f in out.features.values())
    loss = sum((f.float().square().mean() for f in out.features.values()), torch.zeros(()))
    if out.seg is not None:
        loss = loss + torch.nn.functional.cross_entropy(
            out.seg, torch.randint(0, model.nc_seg, (B, IMGSZ, IMGSZ))
        )
    if out.det is not None:
        loss = loss + out.det.box.square().mean() + out.det.cls.sigmoid().mean()
        if out.det.obj is not None:
            loss = loss + out.det.obj.sigmoid().mean()
    task = TaskLoss(model)(out, _batch(model))  # the project's task losses accept every adapter's output
    assert ("det_loss" in task) == (out.det is not None) and ("seg_loss" in task) == (out.seg is not None)
    assert all(torch.isfinite(v) for v in task.values())
    loss = loss + sum(v for k, v in task.items() if k in ("det_loss", "seg_loss"))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)


def test_ultralytics_eval_det_is_detects_raw_output(build_case):
    """In eval mode Ultralytics' Detect returns (decoded, raw); the adapter gives that raw dict, not the decode."""
    model = build_case("ultralytics_det_seghead").eval()
    images = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        out = model(images)
        decoded, raw = model.model(images)  # Ultralytics' own forward
    assert decoded.shape[1] == 4 + model.nc_det  # decoded xywh + class probabilities
    torch.testing.assert_close(out.det.raw["boxes"], raw["boxes"])
    torch.testing.assert_close(out.det.cls, raw["scores"].transpose(1, 2))
    torch.testing.assert_close(out.det.box, raw["boxes"].transpose(1, 2))
