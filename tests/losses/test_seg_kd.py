"""Segmentation logit KD against values computed by hand and with numpy (not with the code under test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtkd.errors import CompatibilityError
from mtkd.losses.logit_kd import seg_cwd, seg_kl


def np_log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_seg_kl(s: np.ndarray, t: np.ndarray, T: float, keep: np.ndarray | None = None) -> float:
    """T^2 * KL(p_t || p_s) summed over classes (axis 1), averaged over kept pixels."""
    ls, lt = np_log_softmax(s / T, 1), np_log_softmax(t / T, 1)
    kl = (np.exp(lt) * (lt - ls)).sum(axis=1)  # [B, h, w]
    if keep is not None:
        kl = kl[keep]
    return float(kl.mean() * T * T)


def np_cwd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    b, c = s.shape[:2]
    ls, lt = np_log_softmax(s.reshape(b, c, -1) / T, 2), np_log_softmax(t.reshape(b, c, -1) / T, 2)
    return float((np.exp(lt) * (lt - ls)).sum(axis=2).mean() * T * T)


def test_one_pixel_by_hand():
    # p_t = softmax([ln 3, 0]) = [3/4, 1/4], p_s = [1/2, 1/2]
    s = torch.zeros(1, 2, 1, 1)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.1308...
    assert seg_kl(s, t, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 4: p_t = softmax([ln 3 / 4, 0]); the result is multiplied by 16
    a = 3.0**0.25
    pt = np.array([a, 1.0]) / (a + 1.0)
    expected_t4 = 16.0 * float((pt * np.log(pt / 0.5)).sum())
    assert seg_kl(s, t, temperature=4.0).item() == pytest.approx(expected_t4, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_matches_numpy(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=g) * 3, torch.randn(2, 3, 4, 5, generator=g) * 3
    assert seg_kl(s, t, temperature=T).item() == pytest.approx(np_seg_kl(s.numpy(), t.numpy(), T), rel=1e-5)


@pytest.mark.filterwarnings("ignore:reduction")
def test_reduction_is_sum_over_classes_not_kldivloss_mean():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 3, generator=g), torch.randn(2, 5, 3, 3, generator=g)
    torch_mean = torch.nn.KLDivLoss(reduction="mean")(F.log_softmax(s, 1), F.softmax(t, 1)).item()
    assert seg_kl(s, t).item() == pytest.approx(5 * torch_mean, rel=1e-5)  # KLDivLoss(mean) divides by C too


def test_teacher_resized_bilinear_to_student():
    # teacher 4x4 made of constant 2x2 blocks: a bilinear (align_corners=False) downsample by 2 returns the blocks
    g = torch.Generator().manual_seed(2)
    blocks = torch.randn(1, 3, 2, 2, generator=g)
    t = blocks.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    s = torch.randn(1, 3, 2, 2, generator=g)
    assert seg_kl(s, t, temperature=2.0).item() == pytest.approx(
        np_seg_kl(s.numpy(), blocks.numpy(), 2.0), rel=1e-5
    )


def test_ignore_mask_nearest_resized_and_excluded():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    ignore = torch.zeros(2, 4, 4, dtype=torch.bool)  # at input resolution, 2x the logits
    ignore[0, 0:2, 0:2] = True  # -> logit pixel (0, 0) of image 0
    ignore[1, 2:4, :] = True  # -> logit row 1 of image 1
    keep = np.ones((2, 2, 2), dtype=bool)
    keep[0, 0, 0] = False
    keep[1, 1, :] = False
    expected = np_seg_kl(s.numpy(), t.numpy(), 1.0, keep)
    assert seg_kl(s, t, ignore_mask=ignore).item() == pytest.approx(expected, rel=1e-5)


def test_all_ignored_is_zero_and_still_connected():
    s = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = seg_kl(s, torch.randn(1, 3, 2, 2), ignore_mask=torch.ones(1, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("fn", [seg_kl, seg_cwd])
def test_teacher_equal_student_is_zero_and_grads_reach_only_student(fn):
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)  # a "teacher" that would accept gradients
    assert fn(s, t, temperature=4.0).item() == pytest.approx(0.0, abs=1e-6)
    fn(s, torch.randn(2, 4, 3, 3).requires_grad_(True), temperature=2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    t2 = torch.randn(2, 4, 3, 3, requires_grad=True)
    fn(s, t2).backward()
    assert t2.grad is None


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_cwd_matches_numpy(T):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 3, 3, 4, generator=g) * 2, torch.randn(2, 3, 3, 4, generator=g) * 2
    assert seg_cwd(s, t, temperature=T).item() == pytest.approx(np_cwd(s.numpy(), t.numpy(), T), rel=1e-5)


def test_cwd_one_channel_by_hand():
    # one channel, 2 positions: p_t = [3/4, 1/4], p_s = [1/2, 1/2]
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    assert seg_cwd(s, t).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)


def test_float32_under_autocast_inputs():
    s, t = torch.randn(1, 3, 4, 4).bfloat16(), torch.randn(1, 3, 8, 8).bfloat16()
    out = seg_kl(s, t, temperature=2.0)
    assert out.dtype == torch.float32
    ref = np_seg_kl(s.float().numpy(), F.interpolate(t.float(), size=(4, 4), mode="bilinear").numpy(), 2.0)
    assert out.item() == pytest.approx(ref, rel=1e-5)


def test_class_mismatch_names_shapes():
    with pytest.raises(CompatibilityError, match=r"teacher seg \(1, 4, 2, 2\).*student seg \(1, 3, 2, 2\)"):
        seg_kl(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2))
