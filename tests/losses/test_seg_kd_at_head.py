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


def _ultralytics(yaml: str):
    pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    nc_det = 0 if "sem" in yaml else 2
    return build_model({"adapter": "ultralytics", "model": yaml}, nc_det=nc_det, nc_seg=3).eval()


@pytest.mark.parametrize("adapter", ["native", "yolov8n.yaml", "yolo26n-sem.yaml"])
def test_seg_upsample_false_returns_the_head_logits_as_seg_outputs(adapter):
    """``supports_seg_head_resolution`` adapters stop before the bilinear upsampling on request: the seg outputs
    are then the head logits, and upsampling them gives the default forward's outputs."""
    if adapter == "native":
        torch.manual_seed(0)
        model = build_model("yolo_mt_n", nc_det=2, nc_seg=3).eval()
    else:
        model = _ultralytics(adapter)
    assert model.supports_seg_head_resolution
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full, low = model(x, features=["p3"]), model(x, features=["p3"], seg_upsample=False)
    assert low.seg.shape == (2, 3, 8, 8) and low.seg is low.seg_head_logits["seg"]
    torch.testing.assert_close(full.seg_head_logits["seg"], low.seg, rtol=0, atol=0)
    torch.testing.assert_close(
        F.interpolate(low.seg, size=(64, 64), mode="bilinear", align_corners=False), full.seg, rtol=0, atol=0
    )
    if full.det is not None:
        torch.testing.assert_close(full.det.cls, low.det.cls, rtol=0, atol=0)
    torch.testing.assert_close(full.features["p3"], low.features["p3"], rtol=0, atol=0)


def test_seg_upsample_false_with_several_seg_tasks():
    torch.manual_seed(0)
    tasks = {"drivable": ["bg", "road"], "lane": ["bg", "lane", "edge"]}
    model = build_model("yolo_mt_n", nc_det=2, seg_tasks=tasks).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full, low = model(x), model(x, seg_upsample=False)
    assert {t: tuple(v.shape) for t, v in low.seg_tasks.items()} == {
        "drivable": (1, 2, 8, 8),
        "lane": (1, 3, 8, 8),
    }
    for t in tasks:
        torch.testing.assert_close(low.seg_tasks[t], full.seg_head_logits[t], rtol=0, atol=0)


@pytest.mark.parametrize("seg_kd", ["kl", "cwd", "dist"])
@pytest.mark.parametrize("at", ["head", "input"])
def test_kd_terms_equal_with_the_teacher_at_head_resolution(seg_kd, at):
    """What ``DistillTask.teacher_outputs`` relies on: every seg KD loss gives the same term for the teacher's
    head logits as for its upsampled outputs, at either ``seg_kd_at``, also when the student has no head logits
    (the loss resizes the teacher with the interpolation the head would have used)."""
    torch.manual_seed(0)
    s = build_model("yolo_mt_n", nc_det=2, nc_seg=3).train()
    t = build_model("yolo_mt_s", nc_det=2, nc_seg=3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        t_full, t_low = t(x), t(x, seg_upsample=False)
    so = s(x)
    masks = torch.randint(0, 3, (2, 64, 64))
    masks[:, :8] = 255
    task = {"seg_loss": torch.tensor(1.0), "det_loss": torch.tensor(1.0)}
    loss = DistillLoss(temperature=2.0, seg_kd=seg_kd, seg_kd_at=at)
    bare = MultiTaskOutput(seg=so.seg, det=so.det)  # a student that exposes no head logits
    for student in (so, bare):
        a = loss(student, t_full, task, 0.0, {"masks": masks})
        b = loss(student, t_low, task, 0.0, {"masks": masks})
        assert float(a["seg_kd"].detach()) > 0
        for k in ("seg_kd", "det_kd", "loss"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_distill_task_asks_a_capable_teacher_for_head_logits_only():
    from mtkd.engine.task import DistillTask, freeze
    from mtkd.models.adapters.base import MultiTaskAdapter

    torch.manual_seed(0)
    student = build_model("yolo_mt_n", nc_det=2, nc_seg=3)
    teacher = freeze(build_model("yolo_mt_s", nc_det=2, nc_seg=3))
    task = DistillTask(student, lambda out, batch: {}, teacher, DistillLoss())
    out = task.teacher_outputs(torch.rand(1, 3, 64, 64))
    assert out.seg.shape == (1, 3, 8, 8) and not out.seg.requires_grad

    class Plain(MultiTaskAdapter):  # an adapter without the option: called as before, no unknown keyword
        def forward(self, images, features=()):
            return MultiTaskOutput(seg=images[:, :3], features={})

    task = DistillTask(student, lambda out, batch: {}, freeze(Plain()), DistillLoss())
    assert task.teacher_outputs(torch.rand(1, 3, 64, 64)).seg.shape == (1, 3, 64, 64)
