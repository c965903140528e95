"""``mtkd report``: one-line errors for bad metrics JSONs and unwritable outputs; atomic report files."""

from __future__ import annotations

import json

import pytest
from mtkd_test_faults import file_size_limit, needs_non_root

from mtkd.cli import run_command
from mtkd.errors import ConfigError, OutputError
from mtkd.report.report import main


def full_metrics(name="m"):
    return {
        "model": {"name": name, "params": 1000, "flops": 2e6, "size_mb": 1.0},
        "det": {
            "mAP50_95": 0.3,
            "mAP50": 0.5,
            "mAP75": None,
            "per_class_AP50_95": {"car": 0.3, "sign": None},
        },
        "seg": {
            "mIoU": 0.6,
            "pixel_acc": 0.9,
            "per_class_IoU": {"bg": 0.9, "road": 0.3},
            "confusion_matrix": [[9, 1], [2, 8]],
            "absent_classes": [],
        },
        "speed": {"device": "cpu", "threads": 2, "imgsz": 64, "latency_ms_p50": 3.0, "latency_ms_p90": 4.0},
        "data": {"yaml": "d.yaml", "split": "val", "images": 4},
    }


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def one_line_error(args, capsys):
    assert run_command("report", args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


@pytest.mark.parametrize(("section", "key", "value", "field"), [
    ("det", "mAP50", "abc", "det.mAP50"),
    ("det", "mAP50", [0.5], "det.mAP50"),
    ("det", "mAP50", True, "det.mAP50"),
    ("seg", "mIoU", {"v": 1}, "seg.mIoU"),
    ("speed", "latency_ms_p50", "3 ms", "speed.latency_ms_p50"),
    ("speed", "throughput_ips", "fast", "speed.throughput_ips"),
    ("model", "params", "1M", "model.params"),
    ("det", "per_class_AP50_95", {"car": "high"}, "det.per_class_AP50_95.car"),
    ("seg", "per_class_IoU", [0.1, 0.2], "seg.per_class_IoU"),
    ("seg", "confusion_matrix", [[1, 2], [3]], "seg.confusion_matrix"),
    ("seg", "absent_classes", "car", "seg.absent_classes"),
])  # fmt: skip
def test_non_numeric_metric_values_are_one_line_naming_file_and_field(
    tmp_path, capsys, section, key, value, field
):
    m = full_metrics()
    m[section][key] = value
    bad = write(tmp_path / "bad.json", m)
    err = one_line_error([str(bad), "--out", str(tmp_path / "r")], capsys)
    assert str(bad) in err and f"'{field}'" in err, err
    assert not (tmp_path / "r").exists()


def test_section_of_the_wrong_type(tmp_path, capsys):
    bad = write(tmp_path / "bad.json", {"det": [0.5, 0.3]})
    err = one_line_error([str(bad), "--out", str(tmp_path / "r")], capsys)
    assert str(bad) in err and "'det': expected an object" in err


@pytest.mark.parametrize("content", ['{"foo": 1}', "{}", "[1, 2]", '"metrics"', "3"])
def test_a_json_that_is_not_mtkd_metrics_is_one_line(tmp_path, capsys, content):
    other = tmp_path / "other.json"
    other.write_text(content)
    err = one_line_error([str(other), "--out", str(tmp_path / "r")], capsys)
    assert str(other) in err and "not an mtkd metrics JSON" in err, err
    assert not (tmp_path / "r").exists()


def test_bad_metrics_json_inside_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("epoch,loss\n1,2.0\n")
    write(run / "metrics.json", {"foo": 1})
    err = one_line_error([str(run), "--out", str(tmp_path / "r")], capsys)
    assert str(run / "metrics.json") in err and "not an mtkd metrics JSON" in err


def test_bad_metrics_stored_in_a_checkpoint(tmp_path, capsys):
    from mtkd.checkpoint import save_checkpoint

    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "results.csv").write_text("epoch,loss\n1,2.0\n")
    save_checkpoint(
        {"model": {"arch": {"adapter": "native"}, "state_dict": {}}, "metrics": {"seg": {"mIoU": "n/a"}}},
        run / "weights" / "best.pt",
    )
    err = one_line_error([str(run), "--out", str(tmp_path / "r")], capsys)
    assert "best.pt" in err and "'seg.mIoU'" in err


def test_partial_and_null_metrics_are_accepted(tmp_path):
    seg_only = write(tmp_path / "seg_only.json", {"model": {"name": "segnet"}, "seg": {"mIoU": 0.5}})
    det_only = write(tmp_path / "det_only.json", {"det": {"mAP50_95": 0.2, "mAP50": None}})
    speed_only = write(tmp_path / "speed_only.json", {"speed": {"latency_ms_p50": 1.5}})
    nulls = full_metrics("nulls")
    nulls["det"] = {k: None for k in nulls["det"]}
    nulls["speed"] = None
    nulls_path = write(tmp_path / "nulls.json", nulls)
    full = write(tmp_path / "full.json", full_metrics("full"))
    out = tmp_path / "r"
    assert (
        main([str(full), str(seg_only), str(det_only), str(speed_only), str(nulls_path), "--out", str(out)])
        == 0
    )
    html = (out / "report.html").read_text()
    assert "segnet" in html and "50.00" in html and "20.00" in html and "1.500" in html


def test_report_write_failure_keeps_the_previous_report(tmp_path):
    out = tmp_path / "r"
    metrics = write(tmp_path / "m.json", full_metrics())
    assert main([str(metrics), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"report.md", "report.html", "per_class_ap.png"} <= set(before)
    with file_size_limit(2048), pytest.raises(OutputError, match="file size limit"):
        main([str(metrics), "--out", str(out), "--title", "new title"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # every file as it was, no temp files


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    metrics = write(tmp_path / "m.json", full_metrics())
    (tmp_path / "r").write_text("keep")
    err = one_line_error([str(metrics), "--out", str(tmp_path / "r")], capsys)
    assert str(tmp_path / "r") in err
    assert (tmp_path / "r").read_text() == "keep"
    with pytest.raises(ConfigError):  # bad inputs are found before the output is touched
        main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "r2")])
    assert not (tmp_path / "r2").exists()


@needs_non_root
@pytest.mark.parametrize("sub", [False, True], ids=["out-is-locked", "out-inside-locked"])
def test_unwritable_out_folder_is_one_line(tmp_path, capsys, sub):
    metrics = write(tmp_path / "m.json", full_metrics())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = locked / "report" if sub else locked
    try:
        err = one_line_error([str(metrics), "--out", str(out)], capsys)
        assert str(locked) in err and "permission denied" in err, err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
