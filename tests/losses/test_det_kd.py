"""Detection logit KD (MSE, teacher weighting, LD) against numpy / hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtkd.errors import CompatibilityError
from mtkd.losses.logit_kd import det_logit_kd
from mtkd.models.outputs import DetOutput


def sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def det(box, obj, cls, kind="anchor", reg_max=None) -> DetOutput:
    return DetOutput(raw=None, box=box, obj=obj, cls=cls, kind=kind, strides=(8,), reg_max=reg_max)


def rand_anchor(seed: int, b=2, a=6, c=3, requires_grad=False) -> DetOutput:
    g = torch.Generator().manual_seed(seed)
    ts = [
        torch.randn(b, a, 4, generator=g),
        torch.randn(b, a, generator=g),
        torch.randn(b, a, c, generator=g),
    ]
    return det(*[t.requires_grad_(requires_grad) for t in ts])


def rand_free(seed: int, b=2, a=5, c=3, reg_max=4, requires_grad=False) -> DetOutput:
    g = torch.Generator().manual_seed(seed)
    box = torch.randn(b, a, 4 * reg_max, generator=g).requires_grad_(requires_grad)
    cls = torch.randn(b, a, c, generator=g).requires_grad_(requires_grad)
    return det(box, None, cls, kind="anchor_free", reg_max=reg_max)


def test_anchor_by_hand():
    # one anchor; student box off by 1 on every coordinate; obj/cls logits 0 vs ln 3 (sigmoid 1/2 vs 3/4)
    s = det(torch.zeros(1, 1, 4), torch.zeros(1, 1), torch.zeros(1, 1, 2))
    t = det(torch.ones(1, 1, 4), torch.full((1, 1), math.log(3.0)), torch.full((1, 1, 2), math.log(3.0)))
    out = det_logit_kd(s, t, weight=2.0, weight_by_teacher=False)
    assert out["det_kd_box"].item() == pytest.approx(1.0)
    assert out["det_kd_obj"].item() == pytest.approx(0.0625)  # (3/4 - 1/2)^2
    assert out["det_kd_cls"].item() == pytest.approx(0.0625)
    assert out["det_kd"].item() == pytest.approx(2.0 * 1.125)
    # with one anchor, weighting by teacher objectness (normalized by the weight sum) changes nothing
    assert det_logit_kd(s, t, weight=2.0)["det_kd"].item() == pytest.approx(2.25, rel=1e-6)


def test_anchor_matches_numpy_weighted_and_unweighted():
    s, t = rand_anchor(0), rand_anchor(1)
    sb, so, sc = (x.numpy() for x in (s.box, s.obj, s.cls))
    tb, to, tc = (x.numpy() for x in (t.box, t.obj, t.cls))
    box_a = ((sb - tb) ** 2).mean(-1)
    cls_a = ((sig(sc) - sig(tc)) ** 2).mean(-1)
    obj = ((sig(so) - sig(to)) ** 2).mean()
    w = sig(to)
    out = det_logit_kd(s, t, weight_by_teacher=False)
    assert out["det_kd_box"].item() == pytest.approx(box_a.mean(), rel=1e-5)
    assert out["det_kd_cls"].item() == pytest.approx(cls_a.mean(), rel=1e-5)
    assert out["det_kd_obj"].item() == pytest.approx(obj, rel=1e-5)
    out = det_logit_kd(s, t, weight=0.5, weight_by_teacher=True)
    box_w, cls_w = (box_a * w).sum() / w.sum(), (cls_a * w).sum() / w.sum()
    assert out["det_kd_box"].item() == pytest.approx(box_w, rel=1e-5)
    assert out["det_kd_cls"].item() == pytest.approx(cls_w, rel=1e-5)
    assert out["det_kd_obj"].item() == pytest.approx(obj, rel=1e-5)  # never weighted
    assert out["det_kd"].item() == pytest.approx(0.5 * (box_w + cls_w + obj), rel=1e-5)


def test_background_anchor_does_not_count_when_weighted():
    # anchor 0: teacher is confident (obj logit 20); anchor 1: background (obj logit -20). Box error on anchor 1 only.
    t = det(torch.zeros(1, 2, 4), torch.tensor([[20.0, -20.0]]), torch.zeros(1, 2, 1))
    s = det(torch.tensor([[[0.0] * 4, [3.0] * 4]]), t.obj.clone(), torch.zeros(1, 2, 1))
    assert det_logit_kd(s, t)["det_kd_box"].item() == pytest.approx(0.0, abs=1e-6)
    assert det_logit_kd(s, t, weight_by_teacher=False)["det_kd_box"].item() == pytest.approx(4.5)


def test_anchor_free_has_no_obj_and_weights_by_max_class_score():
    s, t = rand_free(2), rand_free(3)
    out = det_logit_kd(s, t)
    assert set(out) == {"det_kd", "det_kd_box", "det_kd_cls"}
    sb, sc, tb, tc = (x.numpy() for x in (s.box, s.cls, t.box, t.cls))
    w = sig(tc).max(-1)
    box_a = ((sb - tb) ** 2).mean(-1)
    assert out["det_kd_box"].item() == pytest.approx((box_a * w).sum() / w.sum(), rel=1e-5)
    cls_a = ((sig(sc) - sig(tc)) ** 2).mean(-1)
    assert out["det_kd_cls"].item() == pytest.approx((cls_a * w).sum() / w.sum(), rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_ld_matches_numpy(T):
    s, t = rand_free(4, reg_max=4), rand_free(5, reg_max=4)
    out = det_logit_kd(s, t, ld=True, temperature=T, weight_by_teacher=False)
    sb = s.box.numpy().reshape(2, 5, 4, 4) / T
    tb = t.box.numpy().reshape(2, 5, 4, 4) / T
    ls = sb - np.log(np.exp(sb).sum(-1, keepdims=True))
    lt = tb - np.log(np.exp(tb).sum(-1, keepdims=True))
    kl = (np.exp(lt) * (lt - ls)).sum(-1)  # [B, A, 4]
    assert out["det_kd_box"].item() == pytest.approx(kl.mean() * T * T, rel=1e-5)


@pytest.mark.parametrize("make,ld", [(rand_anchor, False), (rand_free, False), (rand_free, True)])
def test_teacher_equal_student_is_zero_and_no_teacher_grad(make, ld):
    s = make(6, requires_grad=True)
    t = make(6, requires_grad=True)  # same values, tensors that would accept gradients
    out = det_logit_kd(s, t, ld=ld, temperature=4.0)
    assert all(v.item() == pytest.approx(0.0, abs=1e-6) for v in out.values())
    det_logit_kd(s, make(7, requires_grad=True), ld=ld)["det_kd"].backward()
    assert s.box.grad is not None and s.box.grad.abs().sum() > 0 and s.cls.grad.abs().sum() > 0
    t2 = make(8, requires_grad=True)
    det_logit_kd(s, t2, ld=ld)["det_kd"].backward()
    assert t2.box.grad is None and t2.cls.grad is None


def test_mismatches_raise_compatibility_error():
    with pytest.raises(CompatibilityError, match=r"teacher det.box \(2, 7, 4\).*student det.box \(2, 6, 4\)"):
        det_logit_kd(rand_anchor(0, a=6), rand_anchor(1, a=7))
    with pytest.raises(CompatibilityError, match="anchor_free"):
        det_logit_kd(rand_anchor(0), rand_free(1))
    with pytest.raises(CompatibilityError, match="reg_max"):
        s, t = rand_free(0, reg_max=4), rand_free(1, reg_max=4)
        s.reg_max = t.reg_max = 3
        det_logit_kd(s, t, ld=True)
