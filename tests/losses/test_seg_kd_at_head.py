"""Seg KD at the heads' resolution (``distill.seg_kd_at``): the built-in head exposes its logits before the
bilinear upsampling; KD uses them when both models do, at the same size, and the input-size logits otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtkd.losses.combine import DistillLoss
from mtkd.losses.logit_kd import seg_kl
from mtkd.models import build_model
from mtkd.models.outputs import MultiTaskOutput


def _pair():
    torch.manual_seed(0)
    s = build_model("yolo_mt_n", nc_det=2, nc_seg=3).train()
    t = build_model("yolo_mt_s", nc_det=2, nc_seg=3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        to = t(x)
    return s(x), to


def test_head_logits_are_the_outputs_before_upsampling():
    so, _ = _pair()
    low = so.seg_head_logits["seg"]
    assert low.shape == (2, 3, 8, 8) and list(so) == ["seg", "det"]  # not a model output
    torch.testing.assert_close(
        F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False), so.seg
    )


@pytest.mark.parametrize("at", ["head", "input"])
def test_seg_kd_uses_the_head_logits_when_both_models_expose_them(at):
    so, to = _pair()
    masks = torch.randint(0, 3, (2, 64, 64))
    masks[:, :8] = 255
    task = {"seg_loss": torch.tensor(1.0), "det_loss": torch.tensor(1.0)}
    out = DistillLoss(temperature=2.0, seg_kd_at=at, alpha_det=0.0)(so, to, task, 0.0, {"masks": masks})
    if at == "head":
        want = seg_kl(
            so.seg_head_logits["seg"], to.seg_head_logits["seg"], temperature=2.0, ignore_mask=masks == 255
        )
    else:
        want = seg_kl(so.seg, to.seg, temperature=2.0, ignore_mask=masks == 255)
    torch.testing.assert_close(out["seg_kd"], want)


def test_a_teacher_without_head_logits_falls_back_to_input_size():
    so, to = _pair()
    bare = MultiTaskOutput(seg=to.seg, det=to.det)  # e.g. a generic adapter: outputs only
    task = {"seg_loss": torch.tensor(1.0), "det_loss": torch.tensor(1.0)}
    out = DistillLoss(temperature=2.0, alpha_det=0.0)(so, bare, task, 0.0, None)
    torch.testing.assert_close(out["seg_kd"], seg_kl(so.seg, to.seg, temperature=2.0))


def test_the_option_is_checked():
    from mtkd.config import load_config
    from mtkd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"distill.seg_kd_at: 'heads' is not one of \['head', 'input'\]"):
        load_config("configs/shapes_distill.yaml", ["distill.seg_kd_at=heads"])
