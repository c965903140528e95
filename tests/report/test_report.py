"""Report from two metrics JSONs and a run directory: self-contained HTML, Markdown with image files."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from mtkd.errors import ConfigError
from mtkd.eval.overlays import draw_sample
from mtkd.report.report import main

DET, SEG = ["car", "sign"], ["bg", "road", "car"]


def metrics(name, map5095, map50, miou, lat, params, flops, size, pred_dir=None):
    m = {
        "model": {
            "name": name,
            "weights": f"/runs/{name}/weights/best.pt",
            "params": params,
            "flops": flops,
            "size_mb": size,
            "adapter": "native",
        },
        "det": {
            "mAP50_95": map5095,
            "mAP50": map50,
            "mAP75": 0.3,
            "per_class_AP50_95": {"car": map5095 + 0.1, "sign": None},
            "per_class_AP50": {"car": map50, "sign": None},
        },
        "seg": {
            "mIoU": miou,
            "pixel_acc": 0.9,
            "per_class_IoU": {"bg": 0.9, "road": miou, "car": 0.25},
            "confusion_matrix": [[90, 5, 5], [10, 80, 10], [1, 2, 7]],
            "absent_classes": ["car"] if name == "student" else [],
        },
        "speed": {
            "device": "cpu",
            "batch": 1,
            "imgsz": 64,
            "threads": 2,
            "latency_ms_p50": lat,
            "latency_ms_p90": lat * 1.1,
            "latency_rounds": 3,
            "latency_round_ms": [lat * 0.99, lat, lat * 1.01],
            "latency_round_spread": 0.02,
            "latency_stable": True,
            "throughput_ips": 100.0,
            "throughput_batch": 8,
        },
        "data": {"yaml": "/data/shapes/data.yaml", "split": "val", "images": 12},
    }
    if pred_dir:
        m["artifacts"] = {"predictions_dir": pred_dir}
    return m


def write_samples(folder, stems, color):
    d = folder / "samples"
    d.mkdir(parents=True)
    img = np.full((32, 32, 3), color, np.uint8)
    for s in stems:
        (d / f"{s}_gt.png").write_bytes(
            draw_sample(
                img,
                boxes=np.array([[2.0, 2, 20, 20]]),
                labels=[0],
                mask=np.ones((32, 32), int),
                det_names=DET,
            )
        )
        (d / f"{s}.png").write_bytes(
            draw_sample(img, boxes=np.array([[3.0, 3, 21, 19]]), labels=[0], scores=[0.8], det_names=DET)
        )


@pytest.fixture
def inputs(tmp_path):
    write_samples(tmp_path / "pred_a", ["000001", "000002"], 60)
    write_samples(tmp_path / "pred_b", ["000001", "000002"], 180)
    a = tmp_path / "teacher.json"
    a.write_text(json.dumps(metrics("teacher", 0.40, 0.60, 0.50, 10.0, 2_000_000, 4e9, 8.0, "pred_a")))
    b = tmp_path / "student.json"
    b.write_text(json.dumps(metrics("student", 0.45, 0.62, 0.47, 8.0, 1_000_000, 2e9, 4.0, "pred_b")))
    run = tmp_path / "runs" / "distill"
    (run / "weights").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "name: distilled\nteacher: teacher.pt\ntemperature: 4.0\nalpha_seg: 0.5\n"
    )
    (run / "results.csv").write_text(
        "epoch,seg_loss,det_loss,seg_kd,det_kd,loss,det/mAP50,seg/mIoU,lr\n"
        + "".join(
            f"{e},{1 / (e + 1)},{2 / (e + 1)},{0.1},{0.2},{3 / (e + 1)},{e / 10},{e / 8},0.01\n"
            for e in range(4)
        )
    )
    (run / "metrics.json").write_text(
        json.dumps(metrics("distilled", 0.5, 0.7, 0.55, 8.0, 1_000_000, 2e9, 4.0))
    )
    return a, b, run


def test_report_html_is_self_contained_with_numbers_and_deltas(inputs, tmp_path):
    a, b, run = inputs
    out = tmp_path / "report"
    assert main([str(a), str(b), str(run), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    # embedded images only, each a valid PNG
    srcs = re.findall(r'src="([^"]*)"', html)
    assert (
        len(srcs) >= 3 + 1 + 1 + 2 * 3
    )  # per-class charts, curves, confusion, 2 sample rows (GT + 2 models)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "href=" not in html and "<script" not in html and "http" not in html.replace("http-equiv", "")
    # summary numbers and deltas vs the first input (teacher)
    assert "40.00" in html and "45.00 <span" in html and "(+5.00)" in html  # mAP50-95
    assert "(-3.00)" in html  # mIoU 47 vs 50
    assert "8.000" in html and "(-2.000, -20.0%)" in html  # latency
    assert "(-1.000, -50.0%)" in html  # params (M) and size
    assert "50.00" in html and "(+10.00)" in html  # per-class AP of car (0.5 vs 0.6), run dir's mAP 50 vs 40
    assert "30.00 <span" in html and "AR@100" not in html  # all-metrics table: only metrics that exist
    assert "(left out of mIoU): student: car." in html
    # models, data and metric definitions are described
    for text in (
        "teacher",
        "student",
        "distilled",
        "/data/shapes/data.yaml",
        "101-point",
        "absent",
        "ignore_index",
        "Training curves",
        "Sample predictions",
        "temperature=4.0",
    ):
        assert text in html, text


def test_markdown_references_saved_images(inputs, tmp_path):
    a, b, run = inputs
    out = tmp_path / "report"
    main([str(a), str(b), str(run), "--out", str(out)])
    md = (out / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert refs and all((out / r).is_file() and (out / r).read_bytes()[:4] == b"\x89PNG" for r in refs)
    assert "| teacher | 40.00 |" in md and "45.00 (+5.00)" in md
    assert "--:" in md  # tables


def test_single_run_directory_and_errors(inputs, tmp_path):
    from mtkd.checkpoint import save_checkpoint

    _, _, run = inputs
    (run / "metrics.json").unlink()
    ckpt_metrics = {
        k: v for k, v in metrics("x", 0.3, 0.5, 0.6125, 1, 1, 1, 1).items() if k in ("det", "seg")
    }
    save_checkpoint(
        {"model": {"arch": {"adapter": "native"}, "state_dict": {}}, "metrics": ckpt_metrics},
        run / "weights" / "best.pt",
    )
    out = tmp_path / "r1"
    assert main([str(run), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Training curves" in html and "61.25" in html  # mIoU stored in weights/best.pt
    assert "best.pt" in html
    with pytest.raises(ConfigError, match="no such file"):
        main([str(tmp_path / "missing.json"), "--out", str(out)])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ConfigError, match="bad.json"):
        main([str(bad), "--out", str(out)])
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ConfigError, match="results.csv or metrics.json"):
        main([str(empty), "--out", str(out)])


def test_metrics_json_of_a_run_brings_its_training_curves(tmp_path):
    from mtkd.report.inputs import load_entry

    run = tmp_path / "runs" / "distilled"
    (run / "weights").mkdir(parents=True)
    (run / "results.csv").write_text("epoch,loss,seg_kd\n1,2.0,0.5\n2,1.5,0.25\n")
    m = metrics("distilled", 0.1, 0.2, 0.5, 10.0, 1000, 2000, 1.0)
    m["model"]["weights"] = str(run / "weights" / "best.pt")
    (tmp_path / "distilled.json").write_text(json.dumps(m))
    entry = load_entry(tmp_path / "distilled.json")
    assert entry.curves["seg_kd"] == [0.5, 0.25]
    m["model"]["weights"] = str(tmp_path / "pruned.pt")  # not from a run: no curves
    (tmp_path / "pruned.json").write_text(json.dumps(m))
    assert load_entry(tmp_path / "pruned.json").curves == {}
