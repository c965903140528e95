"""``mtkd eval`` end to end on a real (random-weight) built-in model, then ``mtkd report`` on its output."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

pytest.importorskip("mtkd.data.shapes", reason="data layer (mtkd.data.shapes) not written yet")
pytest.importorskip("mtkd.models.build", reason="models (mtkd.models.build) not written yet")

from mtkd.cli import run_command  # noqa: E402
from mtkd.errors import ConfigError  # noqa: E402
from mtkd.eval.evaluate import main  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.data.shapes import make_shapes
    from mtkd.engine.checkpoint import save_checkpoint
    from mtkd.models import build_model, model_state

    root = tmp_path_factory.mktemp("evalcli")
    yaml_path = make_shapes(root / "shapes", n_train=1, n_val=3, size=64, seed=1)
    spec = load_data_yaml(yaml_path)
    model = build_model("yolo_mt_n", det_names=spec.det_names, seg_names=spec.seg_names)
    path = save_checkpoint({"model": model_state(model), "config": {"data": str(yaml_path), "imgsz": 64,
                                                                     "name": "tiny"}},
                           root / "run" / "weights" / "best.pt")
    return root, path


def test_eval_writes_metrics_predictions_and_report(checkpoint, capsys):
    root, weights = checkpoint
    out, pred = root / "metrics.json", root / "pred"
    assert main(["--weights", str(weights), "--out", str(out), "--save-predictions", str(pred), "--batch", "2",
                 "--workers", "0", "--speed-iters", "2", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "det mAP50_95 (%)" in table and "seg mIoU (%)" in table and "latency p50" in table
    m = json.loads(out.read_text())
    assert m["model"]["name"] == "tiny/best" and m["model"]["params"] > 0 and m["model"]["flops"] > 0
    assert m["model"]["size_mb"] == pytest.approx(weights.stat().st_size / 2**20)
    assert m["data"]["images"] == 3 and m["data"]["split"] == "val" and m["data"]["yaml"].endswith("data.yaml")
    assert {"latency_ms_p50", "latency_ms_p90", "threads", "throughput_ips"} <= set(m["speed"])
    assert len(m["seg"]["confusion_matrix"]) == 6 and set(m["det"]["per_class_AP50_95"]) == {
        "ellipse", "rectangle", "triangle", "star"}
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
    from mtkd.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(weights)
    ckpt["config"] = {}
    bare = save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "mtkd_version")},
                           tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="--data"):
        main(["--weights", str(bare), "--no-speed"])
    with pytest.raises(ConfigError, match="--batch"):
        main(["--weights", str(weights), "--batch", "0"])
