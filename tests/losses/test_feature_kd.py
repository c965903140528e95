"""Feature KD: known values for AT/SP/CC, connectors only where channels differ, resize, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtkd.errors import CompatibilityError, ConfigError
from mtkd.losses.connectors import Connector
from mtkd.losses.feature_kd import ATLoss, CCLoss, CWDFeatureLoss, FeatureDistiller, FitNetLoss, SPLoss


def test_at_known_value():
    # student attention: [1,0,0,0] (2 channels, the second all zero); teacher: uniform -> [1/2]*4
    s = torch.zeros(1, 2, 2, 2)
    s[0, 0, 0, 0] = 3.0
    t = torch.ones(1, 5, 2, 2)
    # diff = [1/2, -1/2, -1/2, -1/2] -> mean of squares = 1/4
    assert ATLoss()(s, t).item() == pytest.approx(0.25)


def test_sp_known_value():
    # student samples orthogonal -> G = I; teacher samples equal -> rows [1/sqrt2, 1/sqrt2]
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)
    t = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]).view(2, 3, 1, 1)
    # ||G_s - G_t||_F^2 = 2 (1 - 1/sqrt2)^2 + 2 (1/2) = 4 - 2 sqrt2; / B^2 = 1 - sqrt2 / 2
    assert SPLoss()(s, t).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)


def test_cc_bilinear_known_value_and_gaussian_taylor_converges_to_rbf():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # embeddings orthogonal
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)  # embeddings equal
    # K_s = I, K_t = all ones: ||diff||_F^2 = 2, / 4
    assert CCLoss(kernel="bilinear")(s, t).item() == pytest.approx(0.5)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 6, 5, 5, generator=g)
    gamma = 0.4

    def rbf(f: np.ndarray) -> np.ndarray:
        e = f.mean(axis=(2, 3))
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        d2 = ((e[:, None] - e[None]) ** 2).sum(-1)
        return np.exp(-gamma * d2)

    expected = ((rbf(s.numpy()) - rbf(t.numpy())) ** 2).sum() / 9
    assert CCLoss(gamma=gamma, order=20)(s, t).item() == pytest.approx(expected, rel=1e-4)
    assert CCLoss(gamma=gamma, order=2)(s, t).item() != pytest.approx(expected, rel=1e-4)


def test_cwd_feature_by_hand():
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    assert CWDFeatureLoss()(s, t).item() == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5
    )


def test_connector_only_where_channels_differ():
    d = FeatureDistiller(
        names=["p3", "p4"],
        kind="fitnet",
        student_channels={"p3": 8, "p4": 16},
        teacher_channels={"p3": 16, "p4": 16},
    )
    assert not d.connectors["p3"].is_identity and d.connectors["p4"].is_identity
    assert d.connectors["p3"](torch.zeros(2, 8, 3, 3)).shape == (2, 16, 3, 3)
    assert sum(p.numel() for p in d.connectors["p4"].parameters()) == 0
    for kind in ("at", "sp", "cc"):  # channel-free losses never get connectors
        d = FeatureDistiller(names=["p3"], kind=kind, student_channels={"p3": 8}, teacher_channels={"p3": 16})
        assert len(d.connectors) == 0 and d.built


def test_connector_module():
    c = Connector(4, 6, bn=False)
    assert isinstance(c.proj, torch.nn.Conv2d) and c.proj.kernel_size == (1, 1)
    assert Connector(4, 4).is_identity


@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_connector_matches_its_convolution_in_value_and_gradient(bn, channels_last):
    """On CPU the connector's 1x1 conv runs as a matmul (``conv1x1``): same output and gradients as the module
    chain ``proj(x)`` (conv, then BatchNorm in training mode), to float rounding."""
    g = torch.Generator().manual_seed(3)
    c = Connector(5, 7, bn=bn)
    if not bn:
        torch.nn.init.normal_(c.proj.bias, generator=g)
    x = torch.randn(3, 5, 4, 6, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = c(xa), c.proj(xb)
    assert ya.shape == (3, 7, 4, 6)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    w = torch.randn(ya.shape, generator=g)
    ga = torch.autograd.grad((ya * w).sum(), [xa, *c.parameters()])
    gb = torch.autograd.grad((yb * w).sum(), [xb, *c.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fitnet_resizes_student_to_teacher_size():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 6, 8, 8, generator=g)
    d = FeatureDistiller.from_features({"p3": s}, {"p3": t}, names=["p3"], kind="fitnet")
    out = d({"p3": s}, {"p3": t})
    with torch.no_grad():
        ref = F.mse_loss(F.interpolate(d.connectors["p3"](s), size=(8, 8), mode="bilinear"), t)
    assert set(out) == {"feat_kd", "feat_kd_p3"}
    assert out["feat_kd"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_at_resizes_and_averages_over_names():
    # identical up to a nearest/bilinear-invariant upsampling: constant maps -> AT loss 0 after resize
    s = {"a": torch.ones(1, 3, 2, 2), "b": torch.zeros(1, 2, 2, 2)}
    t = {"a": torch.ones(1, 5, 4, 4), "b": torch.ones(1, 5, 2, 2)}
    s["b"][0, 0, 0, 0] = 1.0
    out = FeatureDistiller(names=["a", "b"], kind="at")(s, t)
    assert out["feat_kd_a"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["feat_kd_b"].item() == pytest.approx(0.25)
    assert out["feat_kd"].item() == pytest.approx(0.125)


@pytest.mark.parametrize("kind", ["fitnet", "at", "sp", "cc", "cwd"])
def test_teacher_equal_student_zero_and_grads_reach_student_and_connectors_only(kind):
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 4, 3, 3, generator=g)
    d = FeatureDistiller(names=["p3"], kind=kind, student_channels={"p3": 4}, teacher_channels={"p3": 4})
    assert d({"p3": f}, {"p3": f.clone()})["feat_kd"].item() == pytest.approx(0.0, abs=1e-6)
    d = FeatureDistiller(names=["p3"], kind=kind, student_channels={"p3": 4}, teacher_channels={"p3": 6})
    s = f.clone().requires_grad_(True)
    t = torch.randn(2, 6, 3, 3, generator=g).requires_grad_(True)
    d({"p3": s}, {"p3": t})["feat_kd"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    for p in d.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_unbuilt_connector_loss_raises_and_dotted_names_work():
    d = FeatureDistiller(names=["model.4"], kind="cwd", temperature=4.0)
    with pytest.raises(RuntimeError, match="not built"):
        d({"model.4": torch.zeros(1, 2, 2, 2)}, {"model.4": torch.zeros(1, 2, 2, 2)})
    d.build({"model.4": 2}, {"model.4": 3})
    assert "connectors.model_4.proj.0.weight" in d.state_dict()
    out = d({"model.4": torch.randn(1, 2, 2, 2)}, {"model.4": torch.randn(1, 3, 2, 2)})
    assert "feat_kd_model.4" in out


def test_errors():
    """Run-time mismatches with the models' features (the config values themselves -- kind, weight, options -- are
    validated by ``mtkd.config``: tests/test_config.py)."""
    with pytest.raises(ConfigError, match=r"feat_kd.names: \['p6'\] not among the student features"):
        FeatureDistiller(names=["p6"], kind="fitnet", student_channels={"p3": 1}, teacher_channels={"p6": 1})
    d = FeatureDistiller(names=["p3"], kind="fitnet", student_channels={"p3": 4}, teacher_channels={"p3": 6})
    with pytest.raises(CompatibilityError, match=r"connector built for 4 -> 6"):
        d({"p3": torch.zeros(1, 5, 2, 2)}, {"p3": torch.zeros(1, 6, 2, 2)})
    with pytest.raises(ConfigError, match="'p3' not among the teacher features"):
        FeatureDistiller(names=["p3"], kind="sp")(
            {"p3": torch.zeros(1, 5, 2, 2)}, {"p4": torch.zeros(1, 6, 2, 2)}
        )


def test_fitnet_loss_is_plain_mse():
    s, t = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1), torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    assert FitNetLoss()(s, t).item() == pytest.approx(2.5)


@pytest.mark.parametrize(
    "loss", [SPLoss(), CCLoss(kernel="bilinear"), FitNetLoss(), ATLoss(), CWDFeatureLoss()]
)
def test_fp32_math_under_autocast(loss):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 8, 5, 5, generator=g), torch.randn(4, 8, 5, 5, generator=g)
    ref = loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(s, t)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=1e-6)


def test_distiller_with_connector_under_autocast():
    d = FeatureDistiller(names=["p3"], kind="fitnet", student_channels={"p3": 4}, teacher_channels={"p3": 6})
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d({"p3": s}, {"p3": torch.randn(2, 6, 6, 6).bfloat16()})
    assert out["feat_kd"].dtype == torch.float32
    out["feat_kd"].backward()
    assert s.grad is not None and all(p.grad is not None for p in d.parameters())
