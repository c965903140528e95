"""Evaluation of a model with several seg tasks (drivable + lane): one confusion matrix per task, YOLOP's lane
metrics on a line task, overlays and report rows per task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtkd.eval.evaluate import evaluate_model, fitness
from mtkd.eval.segmentation import SegmentationEvaluator


def test_line_metrics_known_values():
    """GT line pixels 4, of which 3 predicted; 2 more predicted as line: line_acc 3/4, line_IoU 3/6."""
    ev = SegmentationEvaluator(2, 255, ["background", "lane"], task="lane", lines=True)
    target = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0, 255]])
    pred = torch.tensor([[1, 1, 1, 0, 1, 1, 0, 0, 1]])
    ev.add(pred, target)
    out = ev.evaluate()
    assert list(out) == ["seg/lane"]
    m = out["seg/lane"]
    assert m["line_acc"] == pytest.approx(3 / 4) and m["line_IoU"] == pytest.approx(3 / 6)
    assert m["mIoU"] == pytest.approx((3 / 6 + 2 / 5) / 2) and m["pixels"] == 8
    plain = SegmentationEvaluator(2, 255, ["background", "x"], task="drivable")
    plain.add(pred, target)
    assert "line_acc" not in plain.evaluate()["seg/drivable"]


def test_fitness_takes_the_mean_of_the_tasks():
    m = {"det": {"mAP50_95": 0.4}, "seg/drivable": {"mIoU": 0.8}, "seg/lane": {"mIoU": 0.2}}
    assert fitness(m) == pytest.approx(0.5 * 0.4 + 0.5 * 0.5)


@pytest.fixture(scope="module")
def two_task(tmp_path_factory) -> Path:
    from mtkd.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("two"), n_train=2, n_val=3, size=64, seed=1, seg_tasks=True)


def test_evaluate_model_per_task_with_overlays_and_report(two_task, tmp_path):
    from mtkd.data.build import build_dataloader
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.models import build_model

    spec = load_data_yaml(two_task)
    tasks = {t: st.names for t, st in spec.seg_tasks.items()}
    model = build_model("yolo_mt_n", det_names=spec.det_names, seg_tasks=tasks)
    loader = build_dataloader(spec, "val", imgsz=64, batch=2, augment=False, shuffle=False, workers=0)
    out = evaluate_model(model, loader, spec=spec, progress=False, save_predictions=tmp_path / "pred")
    assert "seg" not in out and {"seg/drivable", "seg/lane", "det"} <= set(out)
    assert "line_acc" in out["seg/lane"] and "line_acc" not in out["seg/drivable"]
    assert out["seg/drivable"]["pixels"] == out["seg/lane"]["pixels"] == 3 * 64 * 64  # original resolution
    assert 0 <= out["det"]["recall50"] <= 1
    names = sorted(p.name for p in (tmp_path / "pred" / "samples").iterdir())
    assert names[:4] == [
        "000000@drivable.png",
        "000000@drivable_gt.png",
        "000000@lane.png",
        "000000@lane_gt.png",
    ]

    from mtkd.report.report import main as report_main

    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({**out, "model": {"name": "two-task", "params": 1}, "artifacts": {}}))
    assert report_main([str(metrics), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "lane: lane line accuracy (%)" in md and "drivable: mIoU (%)" in md and "recall@0.5 (%)" in md
    assert "Per-class IoU, drivable (%)" in md and "Per-class IoU, lane (%)" in md
    mean = (out["seg/drivable"]["mIoU"] + out["seg/lane"]["mIoU"]) / 2
    assert f"| {100 * mean:.2f} |" in md  # the summary's mIoU is the tasks' mean


def test_a_model_whose_tasks_differ_from_the_data_is_refused(two_task):
    from mtkd.data.build import build_dataloader
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.errors import CompatibilityError
    from mtkd.models import build_model

    spec = load_data_yaml(two_task)
    model = build_model(
        "yolo_mt_n", det_names=spec.det_names, seg_tasks={"drivable": ["a", "b"], "road": ["a", "b"]}
    )
    loader = build_dataloader(spec, "val", imgsz=64, batch=2, augment=False, shuffle=False, workers=0)
    with pytest.raises(CompatibilityError, match=r"model has seg tasks .*'road'"):
        evaluate_model(model, loader, spec=spec, progress=False)
