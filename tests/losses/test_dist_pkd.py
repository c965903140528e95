"""DIST on seg logits and PKD on features: hand values, an independent NumPy reference (the authors' formulas),
invariances, ignore pixels, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtkd.losses import FeatureDistiller, PKDLoss, seg_dist, seg_kl

L3 = math.log(3.0)


def _opposite_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """2 pixels, 2 classes: the teacher ranks the classes (and the pixels) exactly opposite to the student."""
    t = torch.tensor([[L3, 0.0], [0.0, L3]]).T.reshape(1, 2, 1, 2)  # pixel 0: [3/4, 1/4], pixel 1: [1/4, 3/4]
    return t.flip(-1).clone(), t  # student: pixels swapped


def test_dist_hand_values():
    s, t = _opposite_pair()
    # every per-pixel and per-class Pearson correlation is -1: inter = intra = 2
    assert seg_dist(s, t).item() == pytest.approx(4.0, rel=1e-6)
    assert seg_dist(s, t, beta=1.0, gamma=0.5).item() == pytest.approx(3.0, rel=1e-6)
    assert seg_dist(s, t, beta=0.0, gamma=1.0).item() == pytest.approx(2.0, rel=1e-6)
    # tau softens the probabilities but keeps the rankings: only the tau^2 factor changes the value
    assert seg_dist(s, t, tau=2.0).item() == pytest.approx(16.0, rel=1e-6)
    # a uniform student has no ranking at all: both correlations are 0 (eps in the denominator) -> 1 + 1
    assert seg_dist(torch.zeros_like(s), t).item() == pytest.approx(2.0, abs=1e-6)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def _dist_reference(s: np.ndarray, t: np.ndarray, keep: np.ndarray | None, beta, gamma, tau) -> float:
    """The authors' segmentation DIST (hunto/DIST_KD): pixels as rows of [N, C], kept pixels selected by index."""

    def softmax_rows(z):
        z = z.transpose(0, 2, 3, 1).reshape(-1, z.shape[1]) / tau
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ps, pt = softmax_rows(s.astype(np.float64)), softmax_rows(t.astype(np.float64))
    if keep is not None:
        ps, pt = ps[keep.reshape(-1)], pt[keep.reshape(-1)]
    inter = 1 - _pearson_rows(ps, pt).mean()
    intra = 1 - _pearson_rows(ps.T, pt.T).mean()
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (2.0, 0.5, 3.0)])
def test_dist_matches_reference_with_ignored_pixels(beta, gamma, tau):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, 6, generator=g) * 2, torch.randn(2, 5, 4, 6, generator=g) * 2
    ignore = torch.rand(2, 4, 6, generator=g) < 0.3
    got = seg_dist(s, t, beta=beta, gamma=gamma, tau=tau, ignore_mask=ignore).item()
    ref = _dist_reference(s.numpy(), t.numpy(), (~ignore).numpy(), beta, gamma, tau)
    assert got == pytest.approx(ref, rel=1e-5)
    assert seg_dist(s, t, beta=beta, gamma=gamma, tau=tau).item() == pytest.approx(
        _dist_reference(s.numpy(), t.numpy(), None, beta, gamma, tau), rel=1e-5
    )
    # ignored pixels really do not count: changing the student there changes nothing
    s2 = torch.where(ignore[:, None], torch.randn(2, 5, 4, 6, generator=g) * 5, s)
    assert seg_dist(s2, t, beta=beta, gamma=gamma, tau=tau, ignore_mask=ignore).item() == pytest.approx(
        got, rel=1e-6
    )


def test_dist_zero_on_equal_invariances_resize_and_gradients():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 3, 3, generator=g)
    assert seg_dist(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # softmax ignores a per-pixel shift of the logits, so DIST does too (unlike the value of every pixel's logits)
    t = torch.randn(2, 4, 3, 3, generator=g)
    shift = torch.randn(2, 1, 3, 3, generator=g) * 10
    assert seg_dist(s + shift, t).item() == pytest.approx(seg_dist(s, t).item(), rel=1e-5)
    # a teacher map of another size is resized to the student's, as for seg_kl
    big = torch.randn(2, 4, 6, 6, generator=g)
    small = F.interpolate(big, size=(3, 3), mode="bilinear", align_corners=False)
    assert seg_dist(s, big).item() == pytest.approx(seg_dist(s, small).item(), rel=1e-6)
    # gradients reach the student, never the teacher
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    seg_dist(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    # every pixel ignored: 0, connected to s with a zero gradient (as seg_kl)
    s.grad = None
    out = seg_dist(s, t, ignore_mask=torch.ones(2, 3, 3, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0 and s.grad.abs().sum() == 0
    assert seg_kl(s, t, ignore_mask=torch.ones(2, 3, 3, dtype=torch.bool)).item() == 0.0


# ---------------------------------------------------------------------------------------------------- PKD
def _pkd_reference(s: np.ndarray, t: np.ndarray) -> float:
    """PKD through its Pearson form: (n - 1) / n * mean over channels of (1 - r_c), r_c over the B*H*W values."""
    c = s.shape[1]
    xs, xt = s.transpose(1, 0, 2, 3).reshape(c, -1), t.transpose(1, 0, 2, 3).reshape(c, -1)
    n = xs.shape[1]
    r = np.array([np.corrcoef(xs[i], xt[i])[0, 1] for i in range(c)])
    return (n - 1) / n * float(np.mean(1 - r))


def test_pkd_hand_value_and_reference():
    # one channel, 4 values: student [1, 2, 3, 4], teacher [1, 2, 4, 3] -> r = 0.8; loss = 3/4 * 0.2 = 0.15
    s = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    t = torch.tensor([1.0, 2.0, 4.0, 3.0]).view(1, 1, 2, 2)
    assert PKDLoss()(s, t).item() == pytest.approx(0.15, rel=1e-5)
    assert PKDLoss()(s, -t).item() == pytest.approx(0.75 * 1.8, rel=1e-5)
    g = torch.Generator().manual_seed(2)
    s, t = (
        torch.randn(3, 4, 5, 5, generator=g),
        torch.randn(3, 4, 5, 5, generator=g) + torch.randn(3, 4, 5, 5),
    )
    assert PKDLoss()(s, t).item() == pytest.approx(_pkd_reference(s.numpy(), t.numpy()), rel=1e-4)


def test_pkd_invariant_to_per_channel_affine_maps_of_either_side():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    base = PKDLoss()(s, t).item()
    scale = torch.tensor([0.01, 3.0, 50.0]).view(1, 3, 1, 1)
    offset = torch.tensor([-7.0, 0.5, 100.0]).view(1, 3, 1, 1)
    assert PKDLoss()(s * scale + offset, t).item() == pytest.approx(base, rel=1e-4)
    assert PKDLoss()(s, t * scale - offset).item() == pytest.approx(base, rel=1e-4)
    # ... but not to a sign flip (a negative scale), nor to a map mixing the channels: not a trivial constant
    assert PKDLoss()(-s, t).item() != pytest.approx(base, rel=1e-2)
    assert PKDLoss()(s.roll(1, dims=1), t).item() != pytest.approx(base, rel=1e-2)
    # whereas FitNet's MSE is not scale invariant at all
    assert F.mse_loss(s * scale, t).item() != pytest.approx(F.mse_loss(s, t).item(), rel=1e-2)


def test_pkd_in_distiller_connectors_and_gradients():
    g = torch.Generator().manual_seed(4)
    f = torch.randn(2, 4, 3, 3, generator=g)
    d = FeatureDistiller(names=["p3"], kind="pkd", student_channels={"p3": 4}, teacher_channels={"p3": 4})
    assert d({"p3": f}, {"p3": f * 5 + 1})["feat_kd"].item() == pytest.approx(0.0, abs=1e-5)
    d = FeatureDistiller(names=["p3"], kind="pkd", student_channels={"p3": 4}, teacher_channels={"p3": 6})
    assert not d.connectors["p3"].is_identity
    s = f.clone().requires_grad_(True)
    t = torch.randn(2, 6, 6, 6, generator=g).requires_grad_(True)  # other size: the student map is resized
    out = d({"p3": s}, {"p3": t})
    with torch.no_grad():
        conn = F.interpolate(d.connectors["p3"](s), size=(6, 6), mode="bilinear", align_corners=False)
    assert out["feat_kd_p3"].item() == pytest.approx(
        _pkd_reference(conn.numpy(), t.detach().numpy()), rel=1e-4
    )
    out["feat_kd"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())
