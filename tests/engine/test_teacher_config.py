"""``teacher=`` as a model config dict (not only a checkpoint): built with ``build_model`` for the dataset's classes,
``generic`` targets only with ``trust_code``, and a composite teacher distilled feature-wise through
``distill.feat_kd.teacher_names`` (``det.p3`` for the student's ``p3``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtkd.config import load_config, save_config
from mtkd.engine.trainer import Trainer
from mtkd.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
TOYS = ROOT / "tests" / "models" / "adapters"  # mtkd_adapter_toys: importable third-party-style models
ANCHORS = [[3, 9, 5, 11, 4, 20], [7, 18, 6, 39, 12, 31], [19, 50, 38, 81, 68, 157]]
DET_T, SEG_T = "mtkd_adapter_toys:YoloPLike", "mtkd_adapter_toys:AnchorFreeToy"
TEACHER = {
    "adapter": "composite",
    "det": {
        "adapter": "generic", "target": DET_T, "kwargs": {"nc": 4}, "outputs": {"det": 0},
        "eval_outputs": {"det": [0, 1]}, "head": "anchor", "strides": [8, 16, 32], "anchors": ANCHORS,
        "features": {"p3": "backbone.stem", "p4": "backbone.p4", "p5": "backbone.p5"},
    },
    "seg": {
        "adapter": "generic", "target": SEG_T, "kwargs": {"nc": 1, "nc_seg": 6}, "outputs": {"seg": "seg"},
        "seg_activation": "softmax", "features": {"p3": "backbone.stem"},
    },
}  # fmt: skip
MAPPING = "distill.feat_kd.teacher_names={p3: det.p3, p4: det.p4, p5: det.p5}"


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.syspath_prepend(str(TOYS))


def _cfg(base_overrides, *extra, teacher=TEACHER, trust=(DET_T, SEG_T)):
    cfg = load_config(ROOT / "configs" / "shapes_distill.yaml", [*base_overrides, *extra])
    # the student's anchors are the teacher's, so det logit KD compares like with like
    model = {"adapter": "native", "name": "yolo_mt_n", "anchors": ANCHORS}
    return cfg.replace(teacher=teacher, trust_code=list(trust), model=model)


_RUNS = iter(range(1000))


def _setup(cfg) -> Trainer:
    trainer = Trainer(cfg.replace(name=f"run{next(_RUNS)}"))
    trainer.setup()
    return trainer


def test_composite_teacher_dict_with_renamed_feature_taps_trains(base_overrides, toys, tmp_path):
    cfg = _cfg(base_overrides, MAPPING)
    trainer = _setup(cfg)
    task = trainer.task
    assert task.feature_names == ["p3", "p4", "p5"]
    assert task.teacher_feature_names == ["det.p3", "det.p4", "det.p5"]
    assert type(task.teacher).__name__ == "CompositeAdapter"
    assert list(task.teacher.det_names) == list(trainer.spec.det_names)
    terms = trainer.run_step(next(iter(trainer.train_loader)), 0, 0)
    for k in ("feat_kd_p3", "feat_kd_p4", "feat_kd_p5", "det_kd", "seg_kd"):
        assert float(terms[k]) > 0, k
    # the dict round-trips through the run's config.yaml (re-runnable as is)
    again = load_config(save_config(cfg, tmp_path / "c.yaml"))
    assert again.teacher == TEACHER and again.distill.feat_kd.teacher_names["p3"] == "det.p3"


def test_composite_teacher_without_the_mapping_says_how_to_map(base_overrides, toys):
    with pytest.raises(
        ConfigError, match=r"the teacher names it 'det.p3': set distill.feat_kd.teacher_names"
    ):
        _setup(_cfg(base_overrides))


def test_generic_target_in_a_teacher_dict_needs_trust_code(base_overrides, toys):
    with pytest.raises(CheckpointError, match=rf"teacher \(model config\).*{DET_T}.*--trust-code"):
        _setup(_cfg(base_overrides, MAPPING, trust=()))
    with pytest.raises(CheckpointError, match=rf"{SEG_T}.*allowed: {DET_T}"):
        _setup(_cfg(base_overrides, MAPPING, trust=(DET_T,)))
    evil = {**TEACHER, "seg": {**TEACHER["seg"], "target": "no_such_pkg_xyz:Boom"}}
    with pytest.raises(CheckpointError, match="no_such_pkg_xyz:Boom"):  # refused before any import is tried
        _setup(_cfg(base_overrides, MAPPING, teacher=evil))


def test_bad_teacher_dict_is_one_line_naming_the_field(base_overrides, toys):
    bad = {**TEACHER, "det": {**TEACHER["det"], "anchors": [[3, 9, 5]] * 3}}
    with pytest.raises(ConfigError, match=r"^teacher: .*field 'anchors'") as e:
        _setup(_cfg(base_overrides, MAPPING, teacher=bad))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^teacher: .*unknown adapter 'compsite'"):
        _setup(_cfg(base_overrides, MAPPING, teacher={**TEACHER, "adapter": "compsite"}))
