"""``mtkd eval`` end to end on a real (random-weight) built-in model, then ``mtkd report`` on its output."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from mtkd_test_faults import file_size_limit, needs_non_root
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

pytest.importorskip("mtkd.data.shapes", reason="data layer (mtkd.data.shapes) not written yet")
pytest.importorskip("mtkd.models.build", reason="models (mtkd.models.build) not written yet")

from mtkd.cli import run_command  # noqa: E402
from mtkd.errors import ConfigError  # noqa: E402
from mtkd.eval.evaluate import main  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mtkd.checkpoint import save_checkpoint
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.data.shapes import make_shapes
    from mtkd.models import build_model, model_state

    root = tmp_path_factory.mktemp("evalcli")
    yaml_path = make_shapes(root / "shapes", n_train=1, n_val=3, size=64, seed=1)
    spec = load_data_yaml(yaml_path)
    model = build_model("yolo_mt_n", det_names=spec.det_names, seg_names=spec.seg_names)
    path = save_checkpoint(
        {"model": model_state(model), "config": {"data": str(yaml_path), "imgsz": 64, "name": "tiny"}},
        root / "run" / "weights" / "best.pt",
    )
    return root, path


def test_eval_writes_metrics_predictions_and_report(checkpoint, capsys):
    root, weights = checkpoint
    out, pred = root / "metrics.json", root / "pred"
    assert (
        main(
            [
                "--weights",
                str(weights),
                "--out",
                str(out),
                "--save-predictions",
                str(pred),
                "--batch",
                "2",
                "--workers",
                "0",
                "--speed-iters",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "det mAP50_95 (%)" in table and "seg mIoU (%)" in table and "latency p50" in table
    m = json.loads(out.read_text())
    assert m["model"]["name"] == "tiny/best" and m["model"]["params"] > 0 and m["model"]["flops"] > 0
    assert m["model"]["size_mb"] == pytest.approx(weights.stat().st_size / 2**20)
    assert (
        m["data"]["images"] == 3 and m["data"]["split"] == "val" and m["data"]["yaml"].endswith("data.yaml")
    )
    assert {"latency_ms_p50", "latency_ms_p90", "threads", "throughput_ips"} <= set(m["speed"])
    assert len(m["seg"]["confusion_matrix"]) == 6 and set(m["det"]["per_class_AP50_95"]) == {
        "ellipse",
        "rectangle",
        "triangle",
        "star",
    }
    # anyone can re-check the mAP from the saved files with pycocotools
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(pred / "ground_truth.json"))
        res = json.loads((pred / "predictions.json").read_text())
        assert res, "a random model still emits low-score boxes at conf=0.001"
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(m["det"]["mAP50_95"], abs=1e-6)
    assert len(list((pred / "samples").glob("*_gt.png"))) == 3
    # the report finds the sample overlays through artifacts.predictions_dir
    assert run_command("report", [str(out), str(out), "--out", str(root / "report")]) == 0
    html = (root / "report" / "report.html").read_text()
    assert "Sample predictions" in html and html.count("data:image/png;base64,") >= 3 * 3 + 3


def test_eval_bad_inputs(checkpoint, tmp_path, capsys):
    root, weights = checkpoint
    assert run_command("eval", ["--weights", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    from mtkd.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(weights)
    ckpt["config"] = {}
    bare = save_checkpoint(
        {k: v for k, v in ckpt.items() if k not in ("format", "mtkd_version")}, tmp_path / "bare.pt"
    )
    with pytest.raises(ConfigError, match="--data"):
        main(["--weights", str(bare), "--no-speed"])
    with pytest.raises(ConfigError, match="--batch"):
        main(["--weights", str(weights), "--batch", "0"])


# --- output files: atomic writes and one-line errors ---------------------------------------------------------


from mtkd.errors import OutputError  # noqa: E402


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


BIG = {"model": {"name": "big"}, "data": {}, "det": {"mAP50": 0.5}, "eval": {"pad": "x" * 200_000}}


def test_eval_out_failed_write_keeps_the_previous_metrics(tmp_path, monkeypatch, capsys):
    import mtkd.eval.cli as cli

    out = tmp_path / "metrics.json"
    out.write_text('{"old": true}')
    monkeypatch.setattr(cli, "run_eval", lambda args: BIG)
    with file_size_limit(64 * 1024), pytest.raises(OutputError, match="metrics.json.*file size limit"):
        main(["--weights", "w.pt", "--out", str(out)])
    assert out.read_text() == '{"old": true}' and _leftovers(tmp_path) == []
    assert main(["--weights", "w.pt", "--out", str(out)]) == 0  # the same write without the limit
    assert json.loads(out.read_text()) == BIG


def test_saved_predictions_failed_write_keeps_the_previous_files(tmp_path):
    import numpy as np

    from mtkd.eval.detection import DetectionEvaluator

    ev = DetectionEvaluator(["a", "b"])
    boxes = np.tile(np.array([[1.0, 2.0, 30.0, 40.0]]), (2000, 1))
    ev.add(
        [{"boxes": boxes, "scores": np.linspace(0.9, 0.1, 2000), "labels": np.zeros(2000, int)}],
        [{"boxes": boxes[:1], "labels": [0], "image_size": (64, 64)}],
    )
    for name in ("predictions.json", "ground_truth.json"):
        (tmp_path / name).write_text("old")
    with file_size_limit(64 * 1024), pytest.raises(OutputError, match="predictions.json"):
        ev.save_json(tmp_path)
    assert [(tmp_path / n).read_text() for n in ("predictions.json", "ground_truth.json")] == ["old", "old"]
    assert _leftovers(tmp_path) == []
    pred, gt = ev.save_json(tmp_path / "new")
    assert len(json.loads(pred.read_text())) == 2000 and json.loads(gt.read_text())["categories"]
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file"):  # a file where the folder should be
        ev.save_json(tmp_path / "file")


def test_benchmark_out_failed_write_keeps_the_previous_results(tmp_path, monkeypatch, capsys):
    import mtkd.engine.benchmark as bench

    res = {
        "ms": {"student_step": 1.0, "teacher_forward": 1.0, "kd_step": 2.0},
        "kd_overhead_ratio": 1.0,
        "kd_vs_student": 2.0,
        "train_images_per_s": 1.0,
        "kd_images_per_s": 1.0,
        "dataloader_images_per_s": 1.0,
        "dataloader_workers": 0,
        "eval_images_per_s": 1.0,
        "eval_vs_train": 1.0,
        "phases_ms": {"student_step": {"total": 1.0}},
        "pad": "x" * 200_000,
    }
    monkeypatch.setattr(bench, "run_benchmark", lambda args: res)
    out = tmp_path / "bench.json"
    out.write_text("old")
    with file_size_limit(64 * 1024):
        assert run_command("benchmark", ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "file size limit" in err
    assert out.read_text() == "old" and _leftovers(tmp_path) == []
    assert run_command("benchmark", ["--out", str(out)]) == 0 and json.loads(out.read_text()) == res
    assert run_command("benchmark", ["--out", str(tmp_path)]) == 2  # a folder
    assert "existing directory" in capsys.readouterr().err


def test_eval_output_paths_are_checked_before_evaluating(tmp_path, monkeypatch, capsys):
    import mtkd.eval.cli as cli

    def must_not_run(args):
        raise AssertionError("evaluated although the output cannot be written")

    monkeypatch.setattr(cli, "run_eval", must_not_run)
    assert run_command("eval", ["--weights", "w.pt", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path) in err and "existing directory" in err
    (tmp_path / "file").write_text("keep")
    assert run_command("eval", ["--weights", "w.pt", "--save-predictions", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "file" in err and "folder" in err
    assert run_command("eval", ["--weights", "w.pt", "--out", str(tmp_path / "file" / "m.json")]) == 2
    assert "cannot create" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep"


@needs_non_root
@pytest.mark.parametrize("flag", ["--out", "--save-predictions"])
def test_eval_unwritable_folder_is_one_line(tmp_path, monkeypatch, capsys, flag):
    import mtkd.eval.cli as cli

    monkeypatch.setattr(cli, "run_eval", lambda args: BIG)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = locked / ("metrics.json" if flag == "--out" else "pred")
        assert run_command("eval", ["--weights", "w.pt", flag, str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(locked) in err and "permission denied" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


@needs_non_root
def test_eval_out_unwritable_at_write_time_is_one_line(tmp_path, monkeypatch, capsys):
    """The folder turns read-only during the evaluation: the atomic writer still reports one line."""
    import mtkd.eval.cli as cli

    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "metrics.json").write_text("old")

    def lock_then_return(args):
        locked.chmod(0o500)
        return BIG

    monkeypatch.setattr(cli, "run_eval", lock_then_return)
    try:
        assert run_command("eval", ["--weights", "w.pt", "--out", str(locked / "metrics.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "metrics.json" in err and "permission denied" in err
        assert (locked / "metrics.json").read_text() == "old"
    finally:
        locked.chmod(0o700)
