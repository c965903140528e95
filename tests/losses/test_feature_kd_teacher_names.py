"""``distill.feat_kd.teacher_names``: student taps distilled from teacher taps of other names (a composite
teacher's ``det.p3`` for the student's ``p3``), and the config's strict checks of the mapping."""

from __future__ import annotations

import pytest
import torch

from mtkd.config import load_config
from mtkd.errors import ConfigError
from mtkd.losses.feature_kd import FeatureDistiller


def test_renamed_teacher_taps_give_the_same_loss_as_same_names():
    torch.manual_seed(0)
    s = {"p3": torch.randn(2, 4, 8, 8), "p4": torch.randn(2, 8, 4, 4)}
    t = {"p3": torch.randn(2, 6, 8, 8), "p4": torch.randn(2, 8, 4, 4)}
    t_composite = {"det.p3": t["p3"], "det.p4": t["p4"], "seg.p3": torch.randn(2, 3, 8, 8)}
    torch.manual_seed(1)
    same = FeatureDistiller(
        names=["p3", "p4"], student_channels={"p3": 4, "p4": 8}, teacher_channels={"p3": 6, "p4": 8}
    )
    torch.manual_seed(1)
    renamed = FeatureDistiller(
        names=["p3", "p4"], teacher_names={"p3": "det.p3", "p4": "det.p4"},
        student_channels={"p3": 4, "p4": 8}, teacher_channels={"det.p3": 6, "det.p4": 8, "seg.p3": 3},
    )  # fmt: skip
    assert renamed.teacher_feature_names == ["det.p3", "det.p4"]
    assert list(renamed.state_dict()) == list(same.state_dict())  # connectors keyed by the student's names
    a, b = same(s, t), renamed(s, t_composite)
    assert set(a) == set(b) == {"feat_kd", "feat_kd_p3", "feat_kd_p4"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_unmapped_name_of_a_composite_teacher_suggests_the_mapping():
    with pytest.raises(ConfigError, match=r"set distill.feat_kd.teacher_names=\{p3: det.p3\}"):
        FeatureDistiller(
            names=["p3"], student_channels={"p3": 4}, teacher_channels={"det.p3": 6, "seg.p3": 3}
        )
    d = FeatureDistiller(names=["p3"], teacher_names={"p3": "det.p33"})
    with pytest.raises(
        ConfigError, match=r"^distill.feat_kd.teacher_names: \[?'det.p33'\]? not among the teacher"
    ):
        d.build({"p3": 4}, {"det.p3": 6})
    with pytest.raises(
        ConfigError, match=r"^distill.feat_kd.teacher_names: \[?'det.p33'\]? not among the teacher"
    ):
        FeatureDistiller(names=["p3"], kind="sp", teacher_names={"p3": "det.p33"})(
            {"p3": torch.zeros(2, 4, 2, 2)}, {"det.p3": torch.zeros(2, 6, 2, 2)}
        )


def test_config_mapping_is_strict():
    cfg = load_config(None, ["distill.feat_kd.names=[p3, p4]", "distill.feat_kd.teacher_names={p3: det.p3}"])
    assert cfg.distill.feat_kd.teacher_names == {"p3": "det.p3"}
    assert load_config(None, ["distill.feat_kd.teacher_names.p4=det.p4", "distill.feat_kd.names=[p4]"]).distill.feat_kd.teacher_names == {"p4": "det.p4"}  # fmt: skip
    with pytest.raises(ConfigError, match=r"teacher_names: 'p33' is not one of distill.feat_kd.names.*'p3'"):
        load_config(None, ["distill.feat_kd.names=[p3]", "distill.feat_kd.teacher_names={p33: det.p3}"])
    with pytest.raises(ConfigError, match=r"teacher_names.p3: expected a teacher feature tap name"):
        load_config(None, ["distill.feat_kd.names=[p3]", "distill.feat_kd.teacher_names={p3: [det.p3]}"])
    with pytest.raises(ConfigError, match=r"teacher_names: expected mapping"):
        load_config(None, ["distill.feat_kd.names=[p3]", "distill.feat_kd.teacher_names=det.p3"])
    with pytest.raises(
        ConfigError, match=r"unknown.*teacher_nmes.*did you mean 'distill.feat_kd.teacher_names'"
    ):
        load_config(None, ["distill.feat_kd.teacher_nmes={p3: det.p3}"])
