"""End-to-end smoke tests of ``mtkd demo`` and ``mtkd benchmark`` on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path, capsys):
    from mtkd.demo import MODELS, main

    out = tmp_path / "demo"
    rc = main(
        [
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "shapes"),
            "--n-train",
            "16",
            "--n-val",
            "8",
            "--imgsz",
            "64",
            "--teacher-epochs",
            "1",
            "--student-epochs",
            "1",
            "--workers",
            "0",
            "--configs",
            str(REPO / "configs"),
        ]
    )
    assert rc == 0
    for name in MODELS:
        m = json.loads((out / "metrics" / f"{name}.json").read_text())
        assert 0.0 <= m["det"]["mAP50"] <= 1.0 and 0.0 <= m["seg"]["mIoU"] <= 1.0
        assert m["model"]["params"] > 0
    pruned = json.loads((out / "metrics" / "pruned.json").read_text())["model"]["params"]
    teacher = json.loads((out / "metrics" / "teacher.json").read_text())["model"]["params"]
    assert 0.3 < pruned / teacher < 0.7  # "about half its parameters"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "distilled" in html
    text = capsys.readouterr().out
    assert "distilled" in text and "fine-tuned" in text


@pytest.mark.slow
def test_benchmark_writes_ratios(tmp_path):
    from mtkd.engine.benchmark import main

    out = tmp_path / "bench.json"
    rc = main(
        [
            "--config",
            str(REPO / "configs" / "shapes_distill.yaml"),
            "--out",
            str(out),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batches",
            "2",
            "--teacher-model",
            "yolo_mt_n",
            f"data={tmp_path / 'missing.yaml'}",
            "imgsz=64",
            "batch=4",
            "workers=0",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    ms = res["ms"]
    assert min(ms.values()) > 0
    import statistics

    rounds = res["rounds_ms"]  # the ratios are medians of per-round ratios (timings taken back to back)
    assert len(rounds["kd_step"]) == 2  # each value rounded to 1 us, as the medians
    assert statistics.median(rounds["kd_step"]) == pytest.approx(ms["kd_step"], abs=1e-3)
    per_round = [
        k / (s + t) for k, s, t in zip(rounds["kd_step"], rounds["student_step"], rounds["teacher_forward"])
    ]
    assert res["kd_overhead_ratio"] == pytest.approx(statistics.median(per_round), rel=1e-3)
    assert res["kd_overhead_ratio_of_medians"] == pytest.approx(
        ms["kd_step"] / (ms["student_step"] + ms["teacher_forward"]), rel=1e-3
    )
    per_round = [k / s for k, s in zip(rounds["kd_step"], rounds["student_step"])]
    assert res["kd_vs_student"] == pytest.approx(statistics.median(per_round), rel=1e-3)
    assert (
        res["dataloader_images_per_s"] > 0 and res["eval_images_per_s"] > 0 and res["eval_first_pass_s"] > 0
    )
    assert res["dataloader_workers"] == 0 and res["dataloader_first_batch_s"] >= 0

    passes = res["eval_passes_s"]  # the rate is the median of the timed passes after the first
    assert len(passes) == 3 and min(passes) > 0
    train_s = res["eval_train_step_s"]  # one training-rate measurement right before each timed pass
    assert len(train_s) == 3 and min(train_s) > 0
    n_eval = res["eval_images_per_s"] * statistics.median(passes)
    ratios = [(round(n_eval) / e) / (4 / t) for e, t in zip(passes, train_s)]
    assert res["eval_vs_train"] == pytest.approx(statistics.median(ratios), rel=2e-3)
    assert n_eval == pytest.approx(round(n_eval), abs=0.05) and round(n_eval) > 0
    assert res["train_images_per_s"] == pytest.approx(4 / ms["student_step"] * 1000, rel=1e-3)
    assert res["kd_images_per_s"] == pytest.approx(4 / ms["kd_step"] * 1000, rel=1e-3)
    steps = ("data_to_device", "forward", "task_loss", "backward", "optimizer", "ema", "other", "total")
    phases = res["phases_ms"]
    assert list(phases["student_step"]) == list(steps)
    assert list(phases["kd_step"]) == [*steps[:2], "teacher_forward", "task_loss", "kd_loss", *steps[3:]]
    for ph in phases.values():
        assert all(v >= 0 for v in ph.values()) and ph["forward"] > 0 and ph["backward"] > 0
        assert sum(v for k, v in ph.items() if k != "total") == pytest.approx(ph["total"], rel=1e-3, abs=0.01)
    assert res["config"]["channels_last"] is False and res["config"]["compile"] is False


def test_steady_rate_excludes_the_first_epoch():
    from mtkd.engine.benchmark_ultralytics import steady_rate

    assert steady_rate([(10.0, 100), (2.0, 100), (3.0, 100)]) == pytest.approx(200 / 5.0)
    with pytest.raises(ValueError, match="at least 2 epochs"):
        steady_rate([(1.0, 10)])


def test_vs_ultralytics_refuses_one_epoch(tmp_path):
    from mtkd.engine.benchmark import main
    from mtkd.errors import ConfigError

    with pytest.raises(ConfigError, match="--epochs: 1"):
        main(["--vs-ultralytics", "--epochs", "1", "--out", str(tmp_path / "b.json")])


@pytest.mark.slow
def test_benchmark_vs_ultralytics_side_by_side(tmp_path, monkeypatch):
    """Both trainers run on the same generated data; the ratio is mtkd's steady-state rate over Ultralytics'."""
    from mtkd.data.shapes import make_shapes
    from mtkd.engine.benchmark import main

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ul"))
    data = make_shapes(tmp_path / "shapes", n_train=16, n_val=4, size=32, seed=0)
    out = tmp_path / "vs.json"
    args = ["--vs-ultralytics", "--epochs", "2", "--out", str(out), f"data={data}", "imgsz=32", "batch=8"]
    assert main([*args, "workers=0"]) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["model"] == "yolov8n.yaml" and res["settings"]["epochs"] == 2
    assert len(res["epochs_s"]["ultralytics"]) == 2 and len(res["epochs_s"]["mtkd"]) == 2
    assert res["ultralytics_images_per_s"] == pytest.approx(16 / res["epochs_s"]["ultralytics"][1], rel=0.01)
    assert res["mtkd_images_per_s"] == pytest.approx(16 / res["epochs_s"]["mtkd"][1], rel=0.01)
    assert res["ratio"] == pytest.approx(res["mtkd_images_per_s"] / res["ultralytics_images_per_s"], rel=0.01)
    assert 0 < res["seg_head_params"] < res["mtkd_params"]


def test_benchmark_takes_overrides_before_and_after_options():
    from mtkd.engine.benchmark import parse_args

    args = parse_args(["imgsz=64", "--steps", "2", "batch=4", "--warmup", "1"])
    assert args.overrides == ["imgsz=64", "batch=4"] and args.steps == 2 and args.warmup == 1


def test_paired_ratio_cancels_a_load_change_between_rounds():
    """Round 2 runs on a machine twice as slow: every per-round ratio is 1.1, the ratio of medians is not."""
    import statistics

    from mtkd.engine.step_timing import paired_ratio

    kd, student, teacher = [1.1, 2.2, 2.2], [0.8, 1.6, 1.6], [0.2, 0.4, 0.4]
    assert paired_ratio(kd, student, teacher) == pytest.approx(1.1)
    assert paired_ratio([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == pytest.approx(2.0)  # the median, not the mean
    # the load changed inside round 2 (kd_step fast, the other two slow): the ratio of medians reads 0.55, the
    # median of the per-round ratios the 1.1 of the two undisturbed rounds
    kd, student, teacher = [1.1, 1.1, 2.2], [0.8, 1.6, 1.6], [0.2, 0.4, 0.4]
    assert paired_ratio(kd, student, teacher) == pytest.approx(1.1)
    assert statistics.median(kd) / (statistics.median(student) + statistics.median(teacher)) == pytest.approx(
        0.55
    )
