"""Issue 13 acceptance on the two-task shapes variant (drivable + lane): teacher -> prune -> fine-tune vs distill
-> eval -> report, every step the public command; the report shows both tasks and the lane metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtkd.cli import run_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_task_teacher_prune_finetune_distill_eval_report(tmp_path):
    from mtkd.data.shapes import make_shapes

    data = make_shapes(tmp_path / "data", n_train=6, n_val=3, size=64, seed=2, seg_tasks=True)
    common = [
        f"data={data}",
        "imgsz=64",
        "batch=3",
        "workers=0",
        "epochs=1",
        "tensorboard=false",
        f"project={tmp_path}",
    ]
    assert run_command("train", [str(ROOT / "configs/shapes_teacher.yaml"), *common, "name=teacher"]) == 0
    teacher = tmp_path / "teacher/weights/last.pt"
    pruned = tmp_path / "pruned.pt"
    assert run_command("prune", ["--weights", str(teacher), "--ratio", "0.3", "--out", str(pruned)]) == 0
    arms = {"ft": "shapes_student.yaml", "kd": "shapes_distill.yaml"}
    for name, cfg in arms.items():
        extra = [f"teacher={teacher}", "seg_tasks.lane.alpha=0.3"] if name == "kd" else []
        assert (
            run_command(
                "train", [str(ROOT / "configs" / cfg), *common, f"student={pruned}", f"name={name}", *extra]
            )
            == 0
        )
    jsons = []
    for name in ("teacher", *arms):
        out = tmp_path / f"{name}.json"
        args = [
            "--weights",
            str(tmp_path / name / "weights/last.pt"),
            "--out",
            str(out),
            "--speed-iters",
            "3",
        ]
        assert (
            run_command(
                "eval", [*args, "--save-predictions", str(tmp_path / "pred" / name), "--speed-budget", "1"]
            )
            == 0
        )
        jsons.append(str(out))
        m = json.loads(out.read_text())
        assert {"seg/drivable", "seg/lane"} <= set(m) and "line_IoU" in m["seg/lane"]
    kd_csv = (tmp_path / "kd/results.csv").read_text().splitlines()[0].split(",")
    assert {"seg_kd/drivable", "seg_kd/lane", "seg/lane/line_acc"} <= set(kd_csv)
    assert run_command("report", [*jsons, "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report/report.md").read_text()
    assert (
        "drivable: mIoU (%)" in md
        and "lane: lane line accuracy (%)" in md
        and "lane: lane line IoU (%)" in md
    )
    assert (tmp_path / "report/report.html").is_file()
