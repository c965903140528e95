"""``distill.off_last_epochs``: where the switch falls on the trainer's progress grid, and that a KD-off step is
plain fine-tuning's step (same loss bitwise, same gradients, no teacher forward)."""

from __future__ import annotations

import pytest
import torch

from mtkd.config import FeatKDConfig
from mtkd.engine.task import DistillTask, TrainTask, feature_channels, freeze
from mtkd.losses import MAIN_KEYS, DistillLoss, plain_loss
from mtkd.losses.task import TaskLoss
from mtkd.models import build_model


@pytest.mark.parametrize(("epochs", "off"), [(1, 0), (3, 1), (3, 2), (10, 1), (10, 3), (300, 2), (300, 299)])
@pytest.mark.parametrize("iters", [1, 3, 7, 13, 1000])
def test_switch_falls_on_the_first_step_of_the_last_n_epochs(epochs, off, iters):
    dl = DistillLoss(off_last_epochs=off, epochs=epochs)
    for g in range(epochs * iters):  # the trainer's progress: global step / total steps
        assert dl.kd_active(g / (epochs * iters)) == (g // iters < epochs - off), g


def test_off_last_epochs_needs_epochs():
    with pytest.raises(ValueError, match="needs epochs"):
        DistillLoss(off_last_epochs=2)
    assert DistillLoss().kd_active(1.0)


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    teacher = freeze(build_model("yolo_mt_s", nc_det=3, nc_seg=4))
    with torch.no_grad():
        teacher.seg.cls.weight.normal_(0.0, 0.5)  # seg logits that depend on the input (init: zeros)
    return teacher, build_model("yolo_mt_n", nc_det=3, nc_seg=4).train()


class _Count(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


@pytest.mark.parametrize("kind", ["fitnet", "mgd"])
def test_kd_off_step_is_plain_fine_tuning(kind, batch_factory):
    teacher, student = _pair()
    counted = _Count(teacher)
    names, cpu = ["p3", "p4"], torch.device("cpu")
    dl = DistillLoss(
        seg_kd="dist", feat_kd=FeatKDConfig(names=tuple(names), kind=kind), off_last_epochs=1, epochs=4
    ).build(feature_channels(student, names, 64, cpu), feature_channels(teacher, names, 64, cpu))
    kd = DistillTask(student, TaskLoss(student), counted, dl)
    plain = TrainTask(student, TaskLoss(student), ratio_seg=dl.ratio_seg, ratio_det=dl.ratio_det)
    batch = batch_factory(2, 64, nc_det=3)

    on = kd(batch, 0.5)  # epoch 3 of 4: distillation
    assert counted.calls == 1 and on["seg_kd"] > 0 and on["det_kd"] > 0 and on["feat_kd"] > 0

    def step(task, progress):
        student.zero_grad(set_to_none=True)
        dl.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # same RNG for both (MGD draws masks; none is drawn when KD is off)
        terms = task(batch, progress)
        terms["loss"].backward()
        return terms, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    off, g_off = step(kd, 0.75)  # epoch 4 of 4: KD off
    # the connectors stay in the graph with zero gradients (DDP expects every parameter in every step)
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in dl.parameters())
    ref, g_ref = step(plain, 0.75)
    assert counted.calls == 1  # no teacher forward in the KD-off epochs
    assert torch.equal(off["loss"], ref["loss"])  # bitwise plain fine-tuning
    assert set(g_off) == set(g_ref) and all(torch.equal(g_off[n], g_ref[n]) for n in g_ref)
    for k in (*MAIN_KEYS, "temperature", "alpha_seg", "alpha_det", "det_kd_box", "seg_total"):
        assert torch.equal(off[k], ref[k]), k
    assert off["seg_kd"] == 0 and off["det_kd"] == 0 and off["feat_kd"] == 0
    assert off["feat_kd_p3"] == 0 and off["feat_kd_p4"] == 0  # the distilled epochs' columns stay
    assert set(off) == set(on)


def test_kd_off_loss_equals_plain_loss_without_a_teacher_output():
    dl = DistillLoss(off_last_epochs=2, epochs=5, ratio_seg=2.0, ratio_det=0.5)
    task = {"seg_loss": torch.tensor(1.25), "det_loss": torch.tensor(3.0), "det_box": torch.tensor(0.5)}
    out = dl(None, None, task, 0.6)  # epoch 4 of 5
    want = plain_loss(task, ratio_seg=2.0, ratio_det=0.5)
    assert set(out) == set(want) and all(torch.equal(out[k], want[k]) for k in want)
    assert out["loss"].item() == pytest.approx(2.0 * 1.25 + 0.5 * 3.0)
