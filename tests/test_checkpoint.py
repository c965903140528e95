"""mtkd.checkpoint: one assembler, safe loading, and one-line reasons for every kind of unloadable file."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import mtkd
from mtkd.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint, save_model
from mtkd.cli import run_command
from mtkd.errors import CheckpointError
from mtkd.models import build_model, load_model


@pytest.fixture(scope="module")
def model():
    return build_model("yolo_mt_n", det_names=["a", "b"], seg_names=["bg", "a"])


def test_save_model_round_trips_and_assembles_the_one_layout(model, tmp_path):
    path = save_model(tmp_path / "m.pt", model, config={"imgsz": 64}, metrics={"x": 1.0})
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"format", "mtkd_version", "model", "names", "config", "metrics"}
    assert ckpt["names"] == {"det": ["a", "b"], "seg": ["bg", "a"]} and ckpt["config"] == {"imgsz": 64}
    assert load_model(path).arch() == model.arch()
    ema = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    assert all((v == 0).all() for v in checkpoint_dict(model, state_dict=ema)["model"]["state_dict"].values())


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("truncated", "not a readable checkpoint (corrupt, truncated or not a PyTorch file"),
        ("text", "not a readable checkpoint (corrupt, truncated or not a PyTorch file"),
        ("random", "not a readable checkpoint (corrupt, truncated or not a PyTorch file"),
        ("empty", "not a readable checkpoint (corrupt, truncated or not a PyTorch file"),
        ("pickled_module", "a pickled model or object (it would import torch.nn.modules.linear.Linear)"),
    ],
)
def test_unloadable_files_get_the_right_one_line_reason(kind, reason, model, tmp_path):
    path = tmp_path / f"{kind}.pt"
    good = save_model(tmp_path / "good.pt", model)
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:300])
    elif kind == "text":
        path.write_text("hello, I am not a checkpoint\n")
    elif kind == "random":
        path.write_bytes(os.urandom(2000))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {reason}") and "\n" not in msg
    assert ("--trust-pickle" in msg) == (kind == "pickled_module")  # no pickle advice for garbage


def test_a_checkpoint_from_a_newer_mtkd_is_refused_naming_the_version(model, tmp_path):
    ckpt = checkpoint_dict(model)
    ckpt["model"]["arch"]["future_field"] = 1
    path = tmp_path / "new.pt"
    save_checkpoint(ckpt, path)
    data = torch.load(path, weights_only=True)
    data["mtkd_version"] = "2.0.0"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"written by mtkd 2\.0\.0, newer than this mtkd"):
        load_checkpoint(path)
    data["mtkd_version"] = mtkd.__version__  # same version, unknown arch key: refused, not dropped
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="unknown field 'future_field'"):
        load_model(path)


def test_prune_into_an_impossible_output_is_one_line(model, tmp_path, capsys):
    weights = save_model(tmp_path / "m.pt", model)
    (tmp_path / "file").write_text("x")
    rc = run_command(
        "prune",
        [
            "--weights",
            str(weights),
            "--ratio",
            "0.3",
            "--imgsz",
            "64",
            "--out",
            str(tmp_path / "file" / "pruned.pt"),
        ],
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(tmp_path / "file") in err
