"""DistillLoss / plain_loss: the formula on hand numbers, schedules, zero terms, gradients, state, construction from
the typed config (its validation and error messages are tested in tests/test_config.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.config import DetKDConfig, FeatKDConfig, load_config
from mtkd.errors import CompatibilityError
from mtkd.losses import EXTRA_KEYS, MAIN_KEYS, DistillLoss, Schedule, plain_loss, seg_kl
from mtkd.models.outputs import DetOutput, MultiTaskOutput, flatten_levels

K = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL([3/4, 1/4] || [1/2, 1/2]), see test_seg_kd


def hand_outputs() -> tuple[MultiTaskOutput, MultiTaskOutput]:
    """seg_kd = K at T=1; det_kd (unweighted) = box 1 + obj 0 + cls 0; AT feature loss = 1/4."""
    s_seg, t_seg = torch.zeros(1, 2, 1, 1), torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    s_det = DetOutput(
        raw=None,
        box=torch.zeros(1, 1, 4),
        obj=torch.zeros(1, 1),
        cls=torch.zeros(1, 1, 2),
        kind="anchor",
        strides=(8,),
    )
    t_det = DetOutput(
        raw=None,
        box=torch.ones(1, 1, 4),
        obj=torch.zeros(1, 1),
        cls=torch.zeros(1, 1, 2),
        kind="anchor",
        strides=(8,),
    )
    s_feat = torch.zeros(1, 2, 2, 2)
    s_feat[0, 0, 0, 0] = 1.0
    t_feat = torch.ones(1, 3, 2, 2)
    return (
        MultiTaskOutput(seg=s_seg, det=s_det, features={"p3": s_feat}),
        MultiTaskOutput(seg=t_seg, det=t_det, features={"p3": t_feat}),
    )


def test_formula_on_hand_numbers():
    s, t = hand_outputs()
    dl = DistillLoss(
        temperature=1.0,
        alpha_seg=0.25,
        alpha_det=0.5,
        ratio_seg=2.0,
        ratio_det=0.5,
        det_kd=DetKDConfig(weight=2.0, weight_by_teacher=False),
        feat_kd=FeatKDConfig(names=("p3",), kind="at", weight=3.0),
    )
    out = dl(
        s,
        t,
        {"seg_loss": torch.tensor(2.0), "det_loss": torch.tensor(3.0), "det_box": torch.tensor(1.5)},
        0.0,
    )
    assert out["seg_kd"].item() == pytest.approx(K, rel=1e-5)
    assert out["det_kd"].item() == pytest.approx(2.0)
    assert out["feat_kd"].item() == pytest.approx(0.25)
    assert out["seg_total"].item() == pytest.approx(0.75 * 2.0 + 0.25 * K, rel=1e-6)
    assert out["det_total"].item() == pytest.approx(0.5 * 3.0 + 0.5 * 2.0)
    # loss = 0.5 * 2.5 + 2 * (1.5 + K/4) + 3 * 0.25
    assert out["loss"].item() == pytest.approx(5.0 + 0.5 * K, rel=1e-6)
    assert out["det_box"].item() == 1.5 and "feat_kd_p3" in out
    assert set(MAIN_KEYS + EXTRA_KEYS) <= set(out)


def test_schedules_drive_temperature_and_alphas():
    s, t = hand_outputs()
    dl = DistillLoss(
        temperature=Schedule("cosine", 1.0, 4.0),
        alpha_seg={"kind": "linear", "start": 0.0, "end": 1.0},  # the config's form of a schedule
        alpha_det=0.0,
    )
    task = {"seg_loss": torch.tensor(2.0), "det_loss": torch.tensor(3.0)}
    out = dl(s, t, task, 0.5)
    assert out["temperature"].item() == pytest.approx(2.5)
    assert out["alpha_seg"].item() == pytest.approx(0.5) and out["alpha_det"].item() == 0.0
    assert out["seg_kd"].item() == pytest.approx(seg_kl(s.seg, t.seg, temperature=2.5).item())
    assert out["seg_total"].item() == pytest.approx(0.5 * 2.0 + 0.5 * out["seg_kd"].item())
    assert dl(s, t, task, 1.0)["seg_total"].item() == pytest.approx(dl(s, t, task, 1.0)["seg_kd"].item())


def test_teacher_equals_student_gives_zero_kd():
    s, _ = hand_outputs()
    dl = DistillLoss(
        temperature=4.0,
        det_kd=DetKDConfig(weight_by_teacher=True),
        feat_kd=FeatKDConfig(names=("p3",), kind="fitnet"),
        student_channels={"p3": 2},
        teacher_channels={"p3": 2},
    )
    out = dl(s, s, {"seg_loss": torch.tensor(1.0), "det_loss": torch.tensor(1.0)}, 0.3)
    for k in ("seg_kd", "det_kd", "det_kd_box", "det_kd_obj", "det_kd_cls", "feat_kd", "feat_kd_p3"):
        assert out[k].item() == pytest.approx(0.0, abs=1e-6), k


def test_ignore_index_from_batch_masks():
    g = torch.Generator().manual_seed(0)
    s, t = (
        MultiTaskOutput(seg=torch.randn(2, 3, 4, 4, generator=g)),
        MultiTaskOutput(seg=torch.randn(2, 3, 4, 4, generator=g)),
    )
    masks = torch.randint(0, 3, (2, 8, 8), generator=g)
    masks[0, :4] = 255
    out = DistillLoss(temperature=1.0, seg_ignore_index=255)(
        s, t, {"seg_loss": torch.tensor(0.0)}, 0.0, batch={"masks": masks}
    )
    expected = seg_kl(s.seg, t.seg, ignore_mask=masks == 255)
    assert out["seg_kd"].item() == pytest.approx(expected.item())
    assert expected.item() != pytest.approx(seg_kl(s.seg, t.seg).item())
    unmasked = DistillLoss(temperature=1.0, seg_ignore_index=None)(
        s, t, {"seg_loss": torch.tensor(0.0)}, 0.0, batch={"masks": masks}
    )
    assert unmasked["seg_kd"].item() == pytest.approx(seg_kl(s.seg, t.seg).item())


def test_absent_terms_are_zero_without_grad_history():
    seg = torch.randn(1, 3, 2, 2, requires_grad=True)
    s, t = MultiTaskOutput(seg=seg), MultiTaskOutput(seg=torch.randn(1, 3, 2, 2))
    out = DistillLoss()(s, t, {"seg_loss": seg.logsumexp(1).mean()}, 0.0)
    for k in ("det_loss", "det_kd", "det_kd_box", "det_kd_obj", "det_kd_cls", "feat_kd", "det_total"):
        assert out[k].item() == 0.0 and not out[k].requires_grad, k
    out["loss"].backward()
    assert torch.isfinite(seg.grad).all()


def test_teacher_without_seg_needs_alpha_zero():
    s = MultiTaskOutput(seg=torch.zeros(1, 2, 1, 1))
    with pytest.raises(CompatibilityError, match="alpha_seg=0"):
        DistillLoss(alpha_seg=0.5)(s, MultiTaskOutput(), {"seg_loss": torch.tensor(1.0)}, 0.0)
    out = DistillLoss(alpha_seg=0.0)(s, MultiTaskOutput(), {"seg_loss": torch.tensor(1.0)}, 0.0)
    assert out["loss"].item() == pytest.approx(1.0)


def test_plain_loss_same_columns_and_formula():
    task = {"seg_loss": torch.tensor(2.0), "det_loss": torch.tensor(3.0), "det_box": torch.tensor(1.0)}
    out = plain_loss(task, ratio_seg=2.0, ratio_det=0.5)
    assert out["loss"].item() == pytest.approx(0.5 * 3.0 + 2.0 * 2.0)
    assert all(out[k].item() == 0.0 for k in ("seg_kd", "det_kd", "feat_kd", "alpha_seg", "alpha_det"))
    s, t = hand_outputs()
    distilled = DistillLoss(feat_kd=FeatKDConfig(names=("p3",), kind="sp"))(s, t, task, 0.0)
    assert set(distilled) - set(out) == {"feat_kd_p3"}
    assert plain_loss(task)["loss"].item() == pytest.approx(3.0 + 2.0)  # the config's default ratios (1, 1)


class Toy(nn.Module):
    """Tiny multi-task net: seg logits [B, 3, H, W], anchor det on every pixel, feature 'p3'."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, width, 3, padding=1)
        self.seg = nn.Conv2d(width, 3, 1)
        self.det = nn.Conv2d(width, 4 + 1 + 2, 1)

    def forward(self, x: torch.Tensor) -> MultiTaskOutput:
        f = self.body(x).relu()
        d = flatten_levels([self.det(f)])
        det = DetOutput(raw=None, box=d[..., :4], obj=d[..., 4], cls=d[..., 5:], kind="anchor", strides=(1,))
        return MultiTaskOutput(seg=self.seg(f), det=det, features={"p3": f})


@pytest.mark.parametrize("kind", ["fitnet", "cwd", "at"])
def test_gradients_reach_only_student_and_connectors(kind):
    torch.manual_seed(0)
    student, teacher = Toy(4), Toy(8)  # teacher params deliberately left requires_grad=True and no no_grad()
    dl = DistillLoss(
        feat_kd=FeatKDConfig(names=("p3",), kind=kind), student_channels={"p3": 4}, teacher_channels={"p3": 8}
    )
    x = torch.rand(2, 3, 8, 8)
    masks = torch.randint(0, 3, (2, 8, 8))
    s, t = student(x), teacher(x)
    task = {"seg_loss": F.cross_entropy(s.seg, masks), "det_loss": s.det.box.pow(2).mean()}
    dl(s, t, task, 0.5, batch={"masks": masks})["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    conn = list(dl.parameters())
    assert bool(conn) == (kind != "at")
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn)


def test_connector_state_separate_from_student():
    student = Toy(4)
    dl = DistillLoss(
        feat_kd=FeatKDConfig(names=("p3",), kind="fitnet"),
        student_channels={"p3": 4},
        teacher_channels={"p3": 8},
    )
    keys = list(dl.state_dict())
    assert keys and all(k.startswith("feature.connectors.p3.") for k in keys)
    assert not any("connectors" in k for k in student.state_dict())
    ids = {id(p) for p in student.parameters()}
    assert not any(id(p) in ids for p in dl.parameters())
    dl2 = DistillLoss.from_config(
        load_config(None, ["distill.feat_kd.names=[p3]", "distill.feat_kd.kind=fitnet"])
    )
    dl2.build({"p3": 4}, {"p3": 8})
    dl2.load_state_dict(dl.state_dict())  # resume restores connectors
    assert dl2.feature_names == ["p3"] and DistillLoss().feature_names == []


def test_from_config_full_section():
    cfg = load_config(
        None,
        [
            "temperature={kind: linear, start: 4, end: 1}",
            "alpha_seg=0.3",
            "alpha_det=0.7",
            "ratio_seg=1.0",
            "ratio_det=2.0",
            "distill.seg_kd=cwd",
            "distill.det_kd={weight: 0.5, weight_by_teacher: false, ld: true, temperature: 10}",
            "distill.feat_kd={names: [p3], kind: cc, weight: 0.1, options: {kernel: bilinear}}",
        ],
    )
    dl = DistillLoss.from_config(cfg, ignore_index=None)
    assert dl.temperature(1.0) == 1.0 and dl.det_kd.temperature == 10.0 and dl.seg_kd == "cwd"
    assert (dl.alpha_seg(0.5), dl.alpha_det(0.5), dl.ratio_seg, dl.ratio_det) == (0.3, 0.7, 1.0, 2.0)
    assert dl.det_kd == DetKDConfig(weight=0.5, weight_by_teacher=False, ld=True, temperature=10.0)
    assert dl.feature.kind == "cc" and dl.feature.weight == 0.1 and dl.feature.built
    assert dl.feature.loss.kernel == "bilinear" and dl.seg_ignore_index is None
    assert DistillLoss.from_config(load_config(None, [])).feature is None  # feat_kd.names: [] = off


def test_defaults_are_the_config_defaults():
    """One set of defaults: a DistillLoss built without arguments equals the one built from the default config."""
    cfg = load_config(None, [])
    a, b = DistillLoss(), DistillLoss.from_config(cfg)
    assert a.temperature == b.temperature == Schedule("constant", cfg.temperature)
    assert (a.alpha_seg, a.alpha_det) == (b.alpha_seg, b.alpha_det) == (Schedule("constant", 0.5),) * 2
    assert (a.ratio_seg, a.ratio_det, a.seg_kd, a.det_kd) == (b.ratio_seg, b.ratio_det, b.seg_kd, b.det_kd)
    assert a.feature is None and b.feature is None and a.seg_ignore_index == b.seg_ignore_index == 255
    assert cfg.temperature == 4.0 and a.temperature(0.0) == 4.0
