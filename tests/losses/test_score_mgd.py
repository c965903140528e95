"""Teacher-confidence maps, the confidence-weighted feature L2 (Ultralytics' KD) and MGD: hand values, the
built-in models' heads, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.config import DetKDConfig, FeatKDConfig
from mtkd.errors import CompatibilityError
from mtkd.losses import (
    DistillLoss,
    FeatureDistiller,
    MGDGenerator,
    MGDLoss,
    ScoreL2Loss,
    confidence_at,
    confidence_maps,
)
from mtkd.losses.task import TaskLoss
from mtkd.models import build_model
from mtkd.models.outputs import DetOutput

L3 = math.log(3.0)  # sigmoid(L3) = 3/4, sigmoid(-L3) = 1/4


def test_score_l2_hand_values():
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(
        1, 2, 1, 2
    )  # [B, C, H, W]: channels (1, 3) at x0, (2, 4) at x1
    # only x0 counts: (1 + 9) / (C=2 * 1)
    assert ScoreL2Loss()(s, t, torch.tensor([[[1.0, 0.0]]])).item() == pytest.approx(5.0)
    # (0.5 * 10 + 0.5 * 20) / (2 * 1)
    assert ScoreL2Loss()(s, t, torch.tensor([[[0.5, 0.5]]])).item() == pytest.approx(7.5)
    # a uniform weight (any level) is plain MSE (FitNet); only the relative weights matter
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    w = torch.rand(2, 4, 4, generator=g)
    assert ScoreL2Loss()(s, t, torch.full((2, 4, 4), 0.3)).item() == pytest.approx(
        F.mse_loss(s, t).item(), rel=1e-6
    )
    assert ScoreL2Loss()(s, t, 7 * w).item() == pytest.approx(ScoreL2Loss()(s, t, w).item(), rel=1e-6)
    with pytest.raises(CompatibilityError, match="does not fit"):
        ScoreL2Loss()(s, t, w[:, :2])


def _anchor_free_det(cls_levels: list[torch.Tensor]) -> DetOutput:
    """Anchor-free ``DetOutput`` from per-level class logits ``[B, nc, H, W]`` (reg_max 1: 4 box channels)."""
    feats = [torch.cat([torch.zeros(c.shape[0], 4, *c.shape[-2:]), c], 1) for c in cls_levels]
    b, nc = cls_levels[0].shape[:2]
    raw = {
        "boxes": torch.cat([f[:, :4].reshape(b, 4, -1) for f in feats], 2),
        "scores": torch.cat([f[:, 4:].reshape(b, nc, -1) for f in feats], 2),
        "feats": feats,
    }
    return DetOutput.from_anchor_free(raw, strides=(8, 16), reg_max=1)


def test_confidence_maps_anchor_free_and_anchor_heads():
    lvl0 = torch.full((1, 2, 2, 2), -L3)
    lvl0[0, 1, 0, 1] = L3  # class 1 confident at (y0, x1)
    lvl1 = torch.tensor([[0.0], [-L3]]).view(1, 2, 1, 1)
    m0, m1 = confidence_maps(_anchor_free_det([lvl0, lvl1]))
    assert torch.allclose(m0, torch.tensor([[[0.25, 0.75], [0.25, 0.25]]]))
    assert torch.allclose(m1, torch.tensor([[[0.5]]]))
    # anchor head: per location the max over its anchors of sigmoid(obj) * max_c sigmoid(cls)
    lv = torch.zeros(1, 2, 1, 2, 5 + 2)  # [B, na=2, H=1, W=2, 5 + nc]
    lv[0, 0, 0, 0, 4], lv[0, 0, 0, 0, 5:] = L3, torch.tensor([L3, -L3])  # 3/4 * 3/4 = 9/16
    lv[0, 1, 0, 0, 4], lv[0, 1, 0, 0, 5:] = -L3, torch.tensor([L3, L3])  # 1/4 * 3/4: not the max
    lv[0, :, 0, 1, 4], lv[0, :, 0, 1, 5:] = -L3, -L3  # 1/16 for both anchors
    det = DetOutput.from_anchor_levels([lv], strides=(8,), anchors=torch.ones(1, 2, 2))
    (m,) = confidence_maps(det)
    assert torch.allclose(m, torch.tensor([[[9 / 16, 1 / 16]]]))
    # a tap at a level's grid takes that map; another size: the level with the nearest area, resized
    assert confidence_at([m0, m1], (1, 1)) is m1
    assert torch.allclose(
        confidence_at([m0, m1], (4, 4)), F.interpolate(m0[:, None], size=(4, 4), mode="bilinear")[:, 0]
    )
    with pytest.raises(CompatibilityError, match="per-level grids are not in det.raw"):
        confidence_maps(
            DetOutput(raw=None, box=det.box, obj=det.obj, cls=det.cls, kind="anchor", strides=(8,))
        )


@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
def test_score_l2_on_builtin_models_weights_by_the_teachers_head(head):
    torch.manual_seed(0)
    names = ["p3", "p4", "p5"]
    teacher = build_model("yolo_mt_s", nc_det=3, nc_seg=4, head=head).eval()
    student = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head=head).train()
    x = torch.rand(2, 3, 64, 64)
    s_out, t_out = student(x, features=names), teacher(x, features=names)
    d = FeatureDistiller.from_features(s_out.features, t_out.features, names=names, kind="score_l2")
    out = d(s_out.features, t_out.features, t_det=t_out.det)
    maps = confidence_maps(t_out.det)
    assert [tuple(m.shape[-2:]) for m in maps] == [tuple(t_out.features[n].shape[-2:]) for n in names]
    for n, m in zip(names, maps):  # by hand: the level of the same grid, Ultralytics' normalization
        se = (d.connectors[n](s_out.features[n]) - t_out.features[n]).pow(2)
        ref = (se * m[:, None]).sum() / (m.sum() * se.shape[1] + 1e-9)
        assert out[f"feat_kd_{n}"].item() == pytest.approx(ref.item(), rel=1e-5)
    # the weights matter: a teacher sure of objects in image 0 only -> the student is free on image 1
    det = t_out.det
    cls = torch.full_like(det.cls, -30.0)
    cls[0] = 30.0
    obj = None if det.obj is None else torch.full_like(det.obj, 30.0)
    sure = DetOutput(raw=det.raw, box=det.box, obj=obj, cls=cls, kind=det.kind, strides=det.strides)
    d.eval()  # connector BatchNorm on running stats: no coupling of the images through batch statistics
    base = d(s_out.features, t_out.features, t_det=sure)["feat_kd"].item()
    for i, changes in ((1, False), (0, True)):
        moved = {n: f.detach().clone() for n, f in s_out.features.items()}
        for f in moved.values():
            f[i] += 3.0 * torch.randn_like(f[i])
        value = d(moved, t_out.features, t_det=sure)["feat_kd"].item()
        assert (value != pytest.approx(base, rel=1e-3)) is changes, (i, value, base)
    out["feat_kd"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in d.parameters())
    with pytest.raises(CompatibilityError, match="teacher has no det output"):
        d(s_out.features, t_out.features)


def test_distill_loss_passes_the_teachers_det_output():
    torch.manual_seed(1)
    names = ("p3", "p4")
    teacher = build_model("yolo_mt_s", nc_det=3, nc_seg=4, head="anchor_free").eval()
    student = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head="anchor_free").train()
    x = torch.rand(2, 3, 64, 64)
    batch = {"images": x, "masks": torch.randint(0, 4, (2, 64, 64)), "boxes": torch.tensor([[5.0, 5, 30, 30]]),
             "labels": torch.tensor([1]), "batch_idx": torch.tensor([0])}  # fmt: skip
    s_out, t_out = student(x, features=names), teacher(x, features=names)
    dl = DistillLoss(
        seg_kd="dist",
        seg_kd_options={"gamma": 2.0},
        seg_kd_at="input",
        det_kd=DetKDConfig(),
        feat_kd=FeatKDConfig(names=names, kind="score_l2"),
    ).build(
        {n: f.shape[1] for n, f in s_out.features.items()}, {n: f.shape[1] for n, f in t_out.features.items()}
    )
    out = dl(s_out, t_out, TaskLoss(student)(s_out, batch), 0.5, batch)
    assert out["feat_kd"].item() == pytest.approx(
        dl.feature(s_out.features, t_out.features, t_det=t_out.det)["feat_kd"].item(), rel=1e-6
    )
    from mtkd.losses import seg_dist

    ignore = (batch["masks"] == 255).any()
    assert not ignore and out["seg_kd"].item() == pytest.approx(
        seg_dist(s_out.seg, t_out.seg, gamma=2.0).item()
    )
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------- MGD
def test_mgd_generator_masks_positions_at_the_ratio_and_generates():
    gen = MGDGenerator(3, 3, mask_ratio=0.65)
    assert isinstance(gen.align, nn.Identity) and gen.in_channels == gen.out_channels == 3
    gen.generation = nn.Identity()  # expose the mask: output = x * keep
    torch.manual_seed(0)
    keep = gen(torch.ones(1, 3, 100, 100))
    assert torch.equal(keep[:, 0], keep[:, 1]) and torch.equal(
        keep[:, 0], keep[:, 2]
    )  # all channels together
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert 1 - keep.mean().item() == pytest.approx(0.65, abs=0.02)
    # golden: the same RNG draw by hand (torch.rand([B, 1, H, W]) > 1 - ratio is masked) through align + generation
    torch.manual_seed(1)
    gen = MGDGenerator(4, 6, mask_ratio=0.5)
    x = torch.randn(2, 4, 5, 5)
    torch.manual_seed(2)
    got = gen(x)
    torch.manual_seed(2)
    mask = (torch.rand(2, 1, 5, 5) > 0.5).float()
    conv1, _, conv2 = gen.generation
    ref = conv2(F.relu(conv1(gen.align(x) * (1 - mask))))
    assert isinstance(gen.align, nn.Conv2d) and torch.allclose(got, ref, atol=1e-6)
    gen.mask_ratio = 0.0  # nothing masked: a plain generator of the aligned map
    assert torch.allclose(gen(x), conv2(F.relu(conv1(gen.align(x)))), atol=1e-6)


def test_mgd_loss_in_distiller_owns_generators_and_trains_them():
    torch.manual_seed(3)
    d = FeatureDistiller(
        names=["p3"], kind="mgd", mask_ratio=0.75, student_channels={"p3": 4}, teacher_channels={"p3": 4}
    )
    gen = d.connectors["p3"]
    assert isinstance(gen, MGDGenerator) and gen.mask_ratio == 0.75  # a generator even when widths agree
    assert {k.split(".")[1] for k in d.state_dict()} == {"p3"}
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 4, 6, 6, requires_grad=True)
    torch.manual_seed(4)
    out = d({"p3": s}, {"p3": t})
    torch.manual_seed(4)
    ref = F.mse_loss(F.interpolate(gen(s), size=(6, 6), mode="bilinear", align_corners=False), t)
    assert out["feat_kd"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert MGDLoss()(s, t.detach()[..., :3, :3]).item() == pytest.approx(F.mse_loss(s, t[..., :3, :3]).item())
    out["feat_kd"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    assert all(p.grad is not None for p in d.parameters())
