"""Task and distillation losses of a model with several seg tasks (drivable + lane): per-task terms, per-task
alpha/ratio, and the single-task path unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtkd.errors import CompatibilityError
from mtkd.losses.combine import DistillLoss, plain_loss
from mtkd.losses.logit_kd import seg_kl
from mtkd.losses.task import TaskLoss
from mtkd.models.outputs import MultiTaskOutput


class _SegOnly:
    """The two things TaskLoss reads from a model: no detection head, and its seg tasks."""

    seg_tasks = {"drivable": ["bg", "drivable"], "lane": ["bg", "lane"]}

    def det_spec(self):
        return None


def _outputs(seed: int) -> MultiTaskOutput:
    g = torch.Generator().manual_seed(seed)
    return MultiTaskOutput(
        seg_tasks={
            "drivable": torch.randn(2, 2, 8, 8, generator=g, requires_grad=True),
            "lane": torch.randn(2, 2, 8, 8, generator=g, requires_grad=True),
        }
    )


def _batch() -> dict:
    g = torch.Generator().manual_seed(7)
    d = torch.randint(0, 2, (2, 8, 8), generator=g)
    ln = torch.randint(0, 2, (2, 8, 8), generator=g)
    d[0, 0, :4] = 255
    ln[1, 3] = 255
    return {"seg_masks": {"drivable": d, "lane": ln}}


def test_task_loss_per_task_cross_entropy_and_sum():
    out, batch = _outputs(0), _batch()
    terms = TaskLoss(_SegOnly())(out, batch)
    for t in ("drivable", "lane"):
        want = F.cross_entropy(out.seg_tasks[t], batch["seg_masks"][t], ignore_index=255)
        assert torch.allclose(terms[f"seg_loss/{t}"], want) and torch.allclose(terms[f"seg_ce/{t}"], want)
    assert torch.allclose(terms["seg_loss"], terms["seg_loss/drivable"] + terms["seg_loss/lane"])
    assert "seg_ce" not in terms


def test_task_loss_refuses_a_batch_without_the_tasks_masks():
    with pytest.raises(
        CompatibilityError, match=r"seg tasks drivable, lane but the batch has masks for: none"
    ):
        TaskLoss(_SegOnly())(_outputs(0), {"masks": torch.zeros(2, 8, 8, dtype=torch.long)})


def test_plain_loss_weighs_each_task_by_its_ratio():
    terms = TaskLoss(_SegOnly())(_outputs(0), _batch())
    out = plain_loss(terms, ratio_seg=0.5, ratio_det=1.0, seg_ratios={"lane": 3.0})
    want = 0.5 * terms["seg_loss/drivable"] + 3.0 * terms["seg_loss/lane"]
    assert torch.allclose(out["loss"], want)
    assert out["seg_kd/lane"] == 0 and torch.equal(out["seg_total/lane"], terms["seg_loss/lane"].float())


def test_distill_loss_per_task_kd_alpha_and_ratio():
    s, t, batch = _outputs(0), _outputs(1), _batch()
    task = TaskLoss(_SegOnly())(s, batch)
    loss = DistillLoss(
        temperature=2.0,
        alpha_seg=0.5,
        ratio_seg=1.0,
        alpha_det=0.0,
        seg_tasks={"lane": {"alpha": 0.25, "ratio": 2.0}},
    )
    out = loss(s, t, task, 0.0, batch)
    kd = {
        n: seg_kl(s.seg_tasks[n], t.seg_tasks[n], temperature=2.0, ignore_mask=batch["seg_masks"][n] == 255)
        for n in ("drivable", "lane")
    }
    assert torch.allclose(out["seg_kd/drivable"], kd["drivable"]) and torch.allclose(
        out["seg_kd/lane"], kd["lane"]
    )
    tot_d = 0.5 * task["seg_loss/drivable"] + 0.5 * kd["drivable"]
    tot_l = 0.75 * task["seg_loss/lane"] + 0.25 * kd["lane"]
    assert torch.allclose(out["seg_total/drivable"], tot_d) and torch.allclose(out["seg_total/lane"], tot_l)
    assert torch.allclose(out["loss"], 1.0 * tot_d + 2.0 * tot_l)
    assert torch.allclose(out["seg_kd"], kd["drivable"] + kd["lane"])
    assert float(out["alpha_seg/lane"]) == 0.25 and float(out["alpha_seg/drivable"]) == 0.5
    out["loss"].backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s.seg_tasks.values())


def test_a_teacher_without_a_task_blocks_only_when_that_task_is_distilled():
    s, batch = _outputs(0), _batch()
    t = MultiTaskOutput(seg_tasks={"drivable": _outputs(1).seg_tasks["drivable"]})
    task = TaskLoss(_SegOnly())(s, batch)
    with pytest.raises(CompatibilityError, match=r"no output for seg task 'lane'.*seg_tasks.lane.alpha=0"):
        DistillLoss(alpha_det=0.0)(s, t, task, 0.0, batch)
    out = DistillLoss(alpha_det=0.0, seg_tasks={"lane": {"alpha": 0.0}})(s, t, task, 0.0, batch)
    assert out["seg_kd/lane"] == 0 and torch.allclose(out["seg_total/lane"], task["seg_loss/lane"])


def test_kd_off_equals_plain_training_with_the_task_ratios():
    s, batch = _outputs(0), _batch()
    task = TaskLoss(_SegOnly())(s, batch)
    loss = DistillLoss(alpha_det=0.0, off_last_epochs=1, epochs=2, seg_tasks={"lane": {"ratio": 2.0}})
    off = loss(s, None, task, 0.75, batch)
    assert torch.equal(off["loss"], plain_loss(task, seg_ratios={"lane": 2.0})["loss"])
    assert off["seg_kd/lane"] == 0 and off["alpha_seg/drivable"] == 0
