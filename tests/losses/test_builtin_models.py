"""Contract test with the built-in model family: every term finite, grads reach the student and connectors only."""

from __future__ import annotations

import pytest
import torch

from mtkd.config import DetKDConfig, FeatKDConfig
from mtkd.losses import MAIN_KEYS, DistillLoss
from mtkd.losses.task import TaskLoss
from mtkd.models import build_model

NAMES = ["p3", "p4", "p5"]


@pytest.mark.parametrize(("head", "kind", "ld"), [("anchor", "fitnet", False), ("anchor_free", "cwd", True)])
def test_distill_builtin_pair(head, kind, ld):
    torch.manual_seed(0)
    teacher = build_model("yolo_mt_s", nc_det=3, nc_seg=4, head=head).eval()
    student = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head=head).train()
    x = torch.rand(2, 3, 64, 64)
    batch = {
        "images": x,
        "masks": torch.randint(0, 4, (2, 64, 64)),
        "boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]),
        "labels": torch.tensor([1]),
        "batch_idx": torch.tensor([0]),
    }
    batch["masks"][:, :8] = 255
    s_out = student(x, features=NAMES)
    t_out = teacher(x, features=NAMES)  # deliberately without no_grad: the losses must detach
    dl = DistillLoss(det_kd=DetKDConfig(ld=ld), feat_kd=FeatKDConfig(names=tuple(NAMES), kind=kind)).build(
        {n: f.shape[1] for n, f in s_out.features.items()}, {n: f.shape[1] for n, f in t_out.features.items()}
    )
    assert all(not c.is_identity for c in dl.feature.connectors.values())  # n and s widths differ
    out = dl(s_out, t_out, TaskLoss(student)(s_out, batch), 0.5, batch)
    assert set(MAIN_KEYS) <= set(out) and all(torch.isfinite(v).all() for v in out.values())
    assert out["seg_kd"] > 0 and out["det_kd"] > 0 and out["feat_kd"] > 0
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is not None for p in dl.parameters())
