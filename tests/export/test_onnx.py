"""ONNX export: onnxruntime matches PyTorch (both head kinds, pruned and not), dynamic batch, model card, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mtkd.checkpoint import save_checkpoint
from mtkd.errors import ConfigError
from mtkd.export.onnx import export_onnx, main, verify_onnx
from mtkd.models import build_model, model_state
from mtkd.prune.prune import prune_model

IMGSZ = 64


def _model(head: str, pruned: bool):
    model = build_model("yolo_mt_n", nc_det=3, nc_seg=4, head=head)
    if pruned:
        prune_model(model, ratio=0.5, imgsz=IMGSZ)
    with torch.no_grad():  # non-trivial BN statistics so that eval-mode BN is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
def test_onnxruntime_matches_torch(tmp_path, head, pruned):
    model = _model(head, pruned)
    path = export_onnx(model, tmp_path / "m.onnx", imgsz=IMGSZ)
    onnx.checker.check_model(str(path))

    expected = ["seg", "det_0", "det_1", "det_2"] if head == "anchor" else ["seg", "det_boxes", "det_scores"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == expected
    for batch in (1, 3):  # dynamic batch axis
        x = torch.rand(batch, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(batch))
        got = dict(zip(expected, session.run(None, {"images": x.numpy()})))
        with torch.no_grad():
            out = model(x)
        ref = {"seg": out.seg}
        if head == "anchor":
            ref.update({f"det_{i}": t for i, t in enumerate(out.det.raw)})
        else:
            ref.update({"det_boxes": out.det.raw["boxes"], "det_scores": out.det.raw["scores"]})
        for name in expected:
            assert got[name].shape == tuple(ref[name].shape)
            np.testing.assert_allclose(got[name], ref[name].numpy(), atol=1e-4, rtol=0)
        assert got["seg"].shape == (batch, 4, IMGSZ, IMGSZ)

    card = json.loads((tmp_path / "m.onnx.json").read_text())
    assert [o["name"] for o in card["outputs"]] == expected
    assert card["det"]["kind"] == head and card["det"]["strides"] == [8, 16, 32]
    assert card["names"] == {"det": model.det_names, "seg": model.seg_names}
    if head == "anchor":
        assert np.allclose(card["det"]["anchors"], model.det.anchors.numpy())
        assert card["outputs"][1]["shape"] == ["batch", 3, IMGSZ // 8, IMGSZ // 8, 5 + 3]
    else:
        assert card["det"]["reg_max"] == 16


def test_verify_reports_parity_latency_and_mismatch(tmp_path):
    model = _model("anchor", False)
    path = export_onnx(model, tmp_path / "m.onnx", imgsz=IMGSZ)
    res = verify_onnx(model, path, IMGSZ, batch=2, iters=2, warmup=1)
    assert res["ok"] and set(res["max_abs_diff"]) == {"seg", "det_0", "det_1", "det_2"}
    assert max(res["max_abs_diff"].values()) <= 1e-4
    assert res["latency_ms"]["torch"] > 0 and res["latency_ms"]["onnxruntime"] > 0
    with torch.no_grad():
        model.seg.cls.bias.add_(0.01)  # the torch model drifts from the exported graph
    res = verify_onnx(model, path, IMGSZ, batch=1, iters=1, warmup=0)
    assert not res["ok"] and res["max_abs_diff"]["seg"] == pytest.approx(0.01, abs=1e-4)


def test_cli_export_with_verify(tmp_path, capsys):
    model = _model("anchor_free", True)
    ckpt = save_checkpoint(
        {"model": model_state(model), "names": {}, "config": {"imgsz": IMGSZ}}, tmp_path / "w.pt"
    )
    out = tmp_path / "sub" / "model.onnx"
    assert main(["--weights", str(ckpt), "--out", str(out), "--verify", "--batch", "2", "--runs", "2"]) == 0
    text = capsys.readouterr().out
    assert f"imgsz {IMGSZ}" in text and "verify OK" in text and "onnxruntime" in text
    assert out.is_file() and (tmp_path / "sub" / "model.onnx.json").is_file()
    with pytest.raises(ConfigError, match="multiple of 32"):
        main(["--weights", str(ckpt), "--out", str(out), "--imgsz", "50"])


def test_two_seg_tasks_export_one_output_each(tmp_path):
    """A drivable + lane model exports seg_drivable and seg_lane; onnxruntime matches torch; the card names the
    tasks' classes and which output is which; verify passes on every output."""
    tasks = {"drivable": ["background", "drivable"], "lane": ["background", "lane"]}
    model = build_model("yolo_mt_n", det_names=["a", "b", "c"], seg_tasks=tasks, head="anchor").eval()
    prune_model(model, ratio=0.3, imgsz=IMGSZ)  # every task's classifier keeps its classes
    path = export_onnx(model, tmp_path / "m.onnx", imgsz=IMGSZ)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["seg_drivable", "seg_lane", "det_0", "det_1", "det_2"]
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    got = dict(zip(names, session.run(None, {"images": x.numpy()})))
    with torch.no_grad():
        out = model(x)
    for t in tasks:
        assert got[f"seg_{t}"].shape == (2, 2, IMGSZ, IMGSZ)
        np.testing.assert_allclose(got[f"seg_{t}"], out.seg_tasks[t].numpy(), atol=1e-4, rtol=0)
    card = json.loads((tmp_path / "m.onnx.json").read_text())
    assert card["names"] == {"det": ["a", "b", "c"], "seg_tasks": tasks}
    assert card["seg"]["tasks"] == {"drivable": "seg_drivable", "lane": "seg_lane"}
    res = verify_onnx(model, path, imgsz=IMGSZ)
    assert res["ok"] and {"seg_drivable", "seg_lane"} <= set(res["max_abs_diff"])
