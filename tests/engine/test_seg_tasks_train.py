"""Training steps of a model with several seg tasks (drivable + lane) on the two-task shapes set: plain and
distilled, per-task terms and per-task options; options naming a task the data lacks are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtkd.config import load_config
from mtkd.engine.trainer import Trainer
from mtkd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_task_data(tmp_path_factory) -> Path:
    from mtkd.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("two"), n_train=4, n_val=2, size=64, seed=0, seg_tasks=True)


def _overrides(data: Path, tmp_path: Path) -> list[str]:
    return [
        f"data={data}",
        "model=yolo_mt_n",
        "imgsz=64",
        "batch=2",
        "workers=0",
        f"project={tmp_path / 'runs'}",
        "tensorboard=false",
    ]


def _first_step(trainer: Trainer) -> dict[str, torch.Tensor]:
    trainer.setup()
    batch = next(iter(trainer.train_loader))
    return trainer.run_step(batch, 0, 0)


def test_plain_step_has_a_loss_per_task_weighted_by_its_ratio(two_task_data, tmp_path):
    cfg = load_config(
        ROOT / "configs" / "shapes_student.yaml",
        [*_overrides(two_task_data, tmp_path), "seg_tasks.lane.ratio=3"],
    )
    trainer = Trainer(cfg)
    terms = _first_step(trainer)
    assert trainer.student.seg_tasks == {
        "drivable": ["background", "drivable"],
        "lane": ["background", "lane"],
    }
    for t in ("drivable", "lane"):
        assert float(terms[f"seg_loss/{t}"]) > 0 and float(terms[f"seg_kd/{t}"]) == 0
    assert torch.allclose(terms["seg_loss"], terms["seg_loss/drivable"] + terms["seg_loss/lane"])
    want = cfg.ratio_det * terms["det_loss"] + terms["seg_loss/drivable"] + 3 * terms["seg_loss/lane"]
    assert torch.allclose(terms["loss"], want, rtol=1e-5)


def test_distilled_step_has_kd_per_task(two_task_data, tmp_path):
    from mtkd.checkpoint import save_model
    from mtkd.models import build_model

    teacher = build_model(
        "yolo_mt_s",
        det_names=["ellipse", "rectangle", "triangle", "star"],
        seg_tasks={"drivable": ["background", "drivable"], "lane": ["background", "lane"]},
    )
    path = save_model(tmp_path / "teacher.pt", teacher)
    cfg = load_config(
        ROOT / "configs" / "shapes_distill.yaml",
        [*_overrides(two_task_data, tmp_path), f"teacher={path}", "seg_tasks.lane.alpha=0.2"],
    )
    terms = _first_step(Trainer(cfg))
    for t in ("drivable", "lane"):
        assert float(terms[f"seg_kd/{t}"]) > 0
    assert float(terms["alpha_seg/lane"]) == pytest.approx(0.2)
    assert float(terms["alpha_seg/drivable"]) == pytest.approx(float(terms["alpha_seg"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "seg_tasks.lanes.alpha=0.1",
            r"seg_tasks.lanes: the dataset .* has no seg task 'lanes' \(did you mean 'lane'",
        ),
        ("seg_tasks.lane.alfa=0.1", r"seg_tasks.lane: 'alfa' is not an option .*did you mean 'alpha'"),
    ],
)
def test_options_for_a_task_the_data_lacks_are_refused(two_task_data, tmp_path, override, message):
    cfg_path = ROOT / "configs" / "shapes_student.yaml"
    with pytest.raises(ConfigError, match=message):
        Trainer(load_config(cfg_path, [*_overrides(two_task_data, tmp_path), override])).setup()


def test_task_options_on_a_single_task_dataset_are_refused(tiny_data, tmp_path):
    cfg = load_config(
        ROOT / "configs" / "shapes_student.yaml", [*_overrides(tiny_data, tmp_path), "seg_tasks.lane.ratio=2"]
    )
    with pytest.raises(ConfigError, match=r"seg_tasks.lane: the dataset .* has one seg task"):
        Trainer(cfg).setup()


def test_yolop_like_generic_teacher_distills_into_a_built_in_two_task_student(
    two_task_data, tmp_path, monkeypatch
):
    """A YOLOP-like model in the user's own file (anchor det head, two sigmoid seg heads) wrapped by the generic
    adapter teaches a built-in two-task student: per-task seg KD from its probabilities turned into logits."""
    from mtkd.checkpoint import save_model
    from mtkd.models import build_model

    monkeypatch.syspath_prepend(str(ROOT / "tests" / "models" / "adapters"))  # the user's own module
    dets = ["ellipse", "rectangle", "triangle", "star"]
    tasks = {"drivable": ["background", "drivable"], "lane": ["background", "lane"]}
    anchors = build_model("yolo_mt_n", det_names=dets, seg_tasks=tasks).det_spec().anchors  # same anchors
    teacher = build_model(
        {
            "adapter": "generic",
            "target": "mtkd_adapter_toys:YoloPLike",
            "kwargs": {"nc": 4},
            "head": "anchor",
            "strides": [8, 16, 32],
            "anchors": [[float(v) for wh in level for v in wh] for level in anchors],
            "outputs": {
                "det": 0,
                "drivable": {"index": 1, "activation": "sigmoid"},
                "lane": {"index": 2, "activation": "sigmoid"},
            },
            "eval_outputs": {"det": [0, 1]},
            "features": {"p3": "backbone.stem"},
        },
        det_names=dets,
        seg_tasks=tasks,
    )
    path = save_model(tmp_path / "yolop_teacher.pt", teacher)
    over = [f"teacher={path}", "trust_code=[mtkd_adapter_toys:YoloPLike]", "distill.feat_kd.names=[p3]"]
    cfg = load_config(ROOT / "configs" / "shapes_distill.yaml", [*_overrides(two_task_data, tmp_path), *over])
    terms = _first_step(Trainer(cfg))
    for t in ("drivable", "lane"):
        assert float(terms[f"seg_kd/{t}"]) > 0 and torch.isfinite(terms[f"seg_kd/{t}"])
    assert float(terms["det_kd"]) > 0 and float(terms["feat_kd"]) > 0
