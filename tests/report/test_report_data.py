"""``mtkd report``'s Data section: a run folder's data YAML and image size come from its ``config.yaml`` (no false
"different data" warning next to an ``mtkd eval`` JSON of the same data), and different evaluation image sizes
are warned about."""

from __future__ import annotations

import json

import pytest

from mtkd.checkpoint import save_checkpoint
from mtkd.errors import ConfigError
from mtkd.report.inputs import load_entry
from mtkd.report.report import main

DIFFERENT_DATA = "evaluated on different data"
DIFFERENT_SIZES = "evaluated at different image sizes"


def _metrics(name, data):
    return {
        "model": {"name": name, "params": 1000},
        "seg": {"mIoU": 0.5, "per_class_IoU": {"bg": 0.9, "road": 0.1}},
        "data": data,
    }


def _run_with_checkpoint_metrics(tmp_path, data_yaml, imgsz=64):
    """A run folder whose only metrics are the validation metrics stored in ``weights/best.pt`` (as the trainer
    writes them: ``data`` without ``yaml`` or ``imgsz``)."""
    run = tmp_path / "runs" / "student"
    (run / "weights").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: student\ndata: {data_yaml}\nimgsz: {imgsz}\n")
    (run / "results.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n")
    stored = {k: v for k, v in _metrics("x", None).items() if k == "seg"}
    stored["data"] = {"split": "val", "images": 12, "seg_resolution": "native"}
    save_checkpoint(
        {"model": {"arch": {"adapter": "native"}, "state_dict": {}}, "metrics": stored},
        run / "weights" / "best.pt",
    )
    return run


def _report(tmp_path, *inputs):
    out = tmp_path / "report"
    assert main([*map(str, inputs), "--out", str(out)]) == 0
    return (out / "report.md").read_text()


def test_run_folder_data_comes_from_its_config_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tiny.yaml").write_text("path: .\n")
    run = _run_with_checkpoint_metrics(tmp_path, "data/tiny.yaml")
    resolved = str((tmp_path / "data" / "tiny.yaml").resolve())
    teacher = tmp_path / "teacher.json"  # mtkd eval --out records the resolved YAML and the image size
    teacher.write_text(
        json.dumps(_metrics("teacher", {"yaml": resolved, "split": "val", "images": 12, "imgsz": 64}))
    )
    entry = load_entry(run)
    assert entry.metrics["data"]["yaml"] == resolved and entry.metrics["data"]["imgsz"] == 64
    md = _report(tmp_path, teacher, run)
    assert DIFFERENT_DATA not in md and DIFFERENT_SIZES not in md
    assert f"`{resolved}`, split val, 12 images" in md


def test_different_image_sizes_are_warned_about(tmp_path):
    data = {"yaml": "/d/data.yaml", "split": "val", "images": 12}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_metrics("teacher", {**data, "imgsz": 640})))
    b.write_text(json.dumps(_metrics("student", {**data, "imgsz": 128})))
    md = _report(tmp_path, a, b)
    assert DIFFERENT_DATA not in md
    assert f"{DIFFERENT_SIZES} (teacher 640 px, student 128 px)" in md
    # a run folder's image size (from config.yaml) counts too
    run = _run_with_checkpoint_metrics(tmp_path, "/d/data.yaml", imgsz=320)
    md = _report(tmp_path, a, run)
    assert f"{DIFFERENT_SIZES} (teacher 640 px, student 320 px)" in md


def test_same_image_size_or_none_recorded_gives_no_warning(tmp_path):
    data = {"yaml": "/d/data.yaml", "split": "val", "images": 12}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_metrics("a", {**data, "imgsz": 128})))
    b.write_text(json.dumps(_metrics("b", {**data, "imgsz": 128})))
    c.write_text(json.dumps(_metrics("c", data)))  # older JSON: no imgsz
    assert DIFFERENT_SIZES not in _report(tmp_path, a, b, c)


def test_non_numeric_imgsz_is_one_line_naming_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_metrics("a", {"yaml": "d.yaml", "split": "val", "imgsz": "big"})))
    with pytest.raises(ConfigError, match=r"field 'data.imgsz': expected a number"):
        load_entry(bad)
