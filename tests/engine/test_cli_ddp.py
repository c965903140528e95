"""``tools/train.py`` end to end: CLI errors, and a 2-process gloo DDP run through ``torchrun``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtkd.cli import run_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=2", "unknown config key 'epoch' (did you mean 'epochs'?)"),
        ("ratio_det=-1", "ratio_det: -1.0 is outside the allowed range [0.0, inf)"),
    ],
)
def test_cli_config_errors_are_one_line(override, message, capsys):
    assert run_command("train", [str(ROOT / "configs" / "shapes_student.yaml"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_missing_data_fails_cleanly(tmp_path, capsys):
    code = run_command(
        "train",
        [
            str(ROOT / "configs" / "shapes_student.yaml"),
            f"data={tmp_path / 'nope.yaml'}",
            f"project={tmp_path}",
        ],
    )
    assert code == 2 and "nope.yaml" in capsys.readouterr().err


def test_ddp_two_process_gloo(tiny_data, tmp_path):
    """torchrun --nproc_per_node 2: both ranks train (1 sample each per step), rank 0 writes the run dir."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "ul"),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tools" / "train.py"),
        str(ROOT / "configs" / "shapes_student.yaml"),
        f"data={tiny_data}",
        "model=yolo_mt_n",
        "imgsz=64",
        "epochs=2",
        "batch=4",
        "workers=0",
        "device=cpu",
        f"project={tmp_path}",
        "name=ddp",
        "tensorboard=false",
        "eval_every=2",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "ddp"
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert ckpt["train"]["world_size"] == 2 and ckpt["train"]["epoch"] == 2
    assert all(not k.startswith("module.") for k in ckpt["model"]["state_dict"])  # DDP wrapper not saved
    assert (run / "weights" / "best.pt").is_file()
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # one writer (rank 0), one row per epoch
    assert float(rows[-1]["seg/mIoU"]) >= 0.0 and float(rows[-1]["det/images"]) == 2  # val split reduced once
    assert res.stdout.count("done:") == 1


def test_ddp_two_process_gloo_distill(tiny_data, tmp_path):
    """DDP wraps the task (student + feature-KD connectors), the teacher stays outside: both ranks distill, rank 0
    saves the student and the connectors, and a second torchrun resumes the run."""
    from mtkd.checkpoint import save_model
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.models import build_model

    spec = load_data_yaml(tiny_data)
    teacher = save_model(
        tmp_path / "teacher.pt", build_model("yolo_mt_s", det_names=spec.det_names, seg_names=spec.seg_names)
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "ul"),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tools" / "train.py"),
        str(ROOT / "configs" / "shapes_distill.yaml"),
        f"teacher={teacher}",
        f"data={tiny_data}",
        "model=yolo_mt_n",
        "imgsz=64",
        "batch=4",
        "workers=0",
        "device=cpu",
        f"project={tmp_path}",
        "name=ddp_kd",
        "tensorboard=false",
        "eval_every=2",
    ]
    for epochs in ("epochs=1", "epochs=2"):
        res = subprocess.run(
            [*cmd, epochs] + (["resume=true"] if epochs == "epochs=2" else []),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp_kd" / "weights" / "last.pt", weights_only=True)
    assert ckpt["train"]["world_size"] == 2 and ckpt["train"]["epoch"] == 2
    assert ckpt["train"]["distill"] and all(
        k.startswith("feature.connectors.") for k in ckpt["train"]["distill"]
    )
    assert all(not k.startswith(("module.", "student.", "teacher")) for k in ckpt["train"]["model"])
    with open(tmp_path / "ddp_kd" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["feat_kd"]) > 0 for r in rows)
