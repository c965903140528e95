"""``mtkd export`` output handling: atomic ONNX + model card pair, opset range, one-line errors."""

from __future__ import annotations

import errno
import json
import os
import warnings

import onnx
import pytest
import torch
from mtkd_test_faults import file_size_limit, needs_non_root

import mtkd.export.onnx as onnx_export
from mtkd.checkpoint import save_checkpoint
from mtkd.cli import run_command
from mtkd.errors import ConfigError, OutputError
from mtkd.export.onnx import MAX_OPSET, MIN_OPSET, export_onnx, verify_onnx
from mtkd.models import build_model, model_state

IMGSZ = 64
OLD_ONNX, OLD_CARD = b"old onnx bytes", '{"old": "card"}'


@pytest.fixture(scope="module")
def model():
    return build_model("yolo_mt_n", nc_det=3, nc_seg=4, head="anchor").eval()


@pytest.fixture
def previous(tmp_path):
    """An existing export the user has: ``m.onnx`` and ``m.onnx.json``."""
    out = tmp_path / "m.onnx"
    out.write_bytes(OLD_ONNX)
    (tmp_path / "m.onnx.json").write_text(OLD_CARD)
    return out


def assert_previous_intact(out):
    assert out.read_bytes() == OLD_ONNX
    assert (out.parent / "m.onnx.json").read_text() == OLD_CARD
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.json"]  # no temp files left


def test_failed_export_keeps_the_previous_onnx_and_card(model, previous, monkeypatch):
    real = torch.onnx.export

    def export_then_fail(wrapper, args, f, **kw):  # writes part of the graph, then fails
        real(wrapper, args, f, **kw)
        if hasattr(f, "truncate"):
            f.truncate(100)
        else:
            with open(f, "r+b") as fh:
                fh.truncate(100)
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", export_then_fail)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model, previous, imgsz=IMGSZ)
    assert_previous_intact(previous)


def test_disk_full_keeps_the_previous_onnx_and_card(model, previous):
    with file_size_limit(64 * 1024), pytest.raises(OutputError, match=r"m\.onnx.*file size limit.*unchanged"):
        export_onnx(model, previous, imgsz=IMGSZ)
    assert_previous_intact(previous)
    export_onnx(model, previous, imgsz=IMGSZ)  # without the limit: both replaced
    onnx.checker.check_model(str(previous))
    assert json.loads((previous.parent / "m.onnx.json").read_text())["format"] == "mtkd-onnx"


def test_failed_model_card_keeps_the_previous_onnx(model, previous, monkeypatch):
    def no_card(*a, **k):
        raise ValueError("card failed")

    monkeypatch.setattr(onnx_export, "model_card", no_card)
    with pytest.raises(ValueError, match="card failed"):
        export_onnx(model, previous, imgsz=IMGSZ)
    assert_previous_intact(previous)


def test_card_that_cannot_replace_the_old_one_is_removed_not_left_stale(model, previous, monkeypatch):
    """The one window between the two replaces: the new ONNX is in place, its card cannot be; the old card,
    which describes the previous graph, is removed and the error says so."""
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".onnx.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match=r"ONNX model written.*no space left.*stale model card .* removed"):
        export_onnx(model, previous, imgsz=IMGSZ)
    monkeypatch.undo()
    onnx.checker.check_model(str(previous))  # the new graph
    assert sorted(p.name for p in previous.parent.iterdir()) == ["m.onnx"]


def test_opset_range(model, tmp_path, capsys):
    ckpt = save_checkpoint({"model": model_state(model), "config": {"imgsz": IMGSZ}}, tmp_path / "w.pt")
    for bad in ("5", str(MIN_OPSET - 1), str(MAX_OPSET + 1)):
        assert (
            run_command("export", ["--weights", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--opset", bad])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert (
            "\n" not in err and f"--opset: expected an ONNX opset from {MIN_OPSET} to {MAX_OPSET}" in err
        ), err
        assert err.endswith(f"got {bad}")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", imgsz=IMGSZ, opset=21)
    constants = getattr(
        getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", MAX_OPSET
    )
    assert MAX_OPSET == constants  # the exporter's own limit (torch 2.14: 20)


@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
def test_opset_range_bounds_export_and_match_torch(model, tmp_path, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. torch's "Upsample ... might not match" below 11
        path = export_onnx(model, tmp_path / "m.onnx", imgsz=IMGSZ, opset=opset)
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert verify_onnx(model, path, IMGSZ, batch=2, iters=1, warmup=0)["ok"]


def test_out_an_existing_directory_is_one_line(model, tmp_path, capsys):
    ckpt = save_checkpoint({"model": model_state(model), "config": {"imgsz": IMGSZ}}, tmp_path / "w.pt")
    (tmp_path / "dir.onnx").mkdir()
    assert run_command("export", ["--weights", str(ckpt), "--out", str(tmp_path / "dir.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dir.onnx" in err and "existing directory" in err
    (tmp_path / "m.onnx.json").mkdir()  # the card's path
    assert run_command("export", ["--weights", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "m.onnx.json" in err and "existing directory" in err
    assert not (tmp_path / "m.onnx").exists()


@needs_non_root
def test_unwritable_out_folder_is_one_line(model, tmp_path, capsys):
    ckpt = save_checkpoint({"model": model_state(model), "config": {"imgsz": IMGSZ}}, tmp_path / "w.pt")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert run_command("export", ["--weights", str(ckpt), "--out", str(locked / "m.onnx")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(locked) in err and "permission denied" in err
        with pytest.raises(OutputError, match="permission denied"):
            export_onnx(model, locked / "m.onnx", imgsz=IMGSZ)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
