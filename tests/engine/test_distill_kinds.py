"""End to end on the tiny generated dataset (CPU): every new distillation kind trains, and the KD-off last epochs
log zero KD terms and resume bitwise."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from mtkd.checkpoint import save_checkpoint
from mtkd.config import load_config
from mtkd.engine.hooks import HookBase
from mtkd.engine.trainer import Trainer


def _rows(run):
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _teacher(tiny_data, path, head: str = "anchor"):
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.models import build_model, model_state

    spec = load_data_yaml(tiny_data)
    torch.manual_seed(7)
    teacher = build_model("yolo_mt_n", head=head, det_names=spec.det_names, seg_names=spec.seg_names)
    with torch.no_grad():  # input-dependent seg logits (init: zeros)
        teacher.seg.cls.weight.normal_(0.0, 0.5)
    names = {"det": spec.det_names, "seg": spec.seg_names}
    return save_checkpoint({"model": model_state(teacher), "names": names, "config": {}}, path)


def _train(overrides, hooks=()):
    return Trainer(load_config(None, overrides), hooks=hooks).fit()


@pytest.mark.parametrize(
    ("head", "recipe"),
    [
        (
            "anchor",
            ["distill.seg_kd=dist", "distill.seg_kd_options={beta: 1, gamma: 2}", "distill.feat_kd.kind=pkd"],
        ),
        ("anchor", ["distill.feat_kd.kind=score_l2"]),
        ("anchor_free", ["distill.feat_kd.kind=score_l2", "distill.seg_kd=dist"]),
        ("anchor", ["distill.feat_kd={kind: mgd, options: {mask_ratio: 0.5}}"]),
    ],
    ids=["dist+pkd", "score_l2-anchor", "score_l2-anchor_free+dist", "mgd"],
)
def test_new_kinds_train_one_epoch(base_overrides, tiny_data, tmp_path, head, recipe):
    tpath = _teacher(tiny_data, tmp_path / "teacher.pt", head)
    over = [*base_overrides, "name=kd", f"teacher={tpath}", f"head={head}", "epochs=1", "batch=4"]
    run = _train([*over, *recipe, "distill.feat_kd.names=[p3, p4]"])
    (row,) = _rows(run)
    for term in ("seg_kd", "det_kd", "feat_kd", "feat_kd_p3", "feat_kd_p4", "loss"):
        assert math.isfinite(float(row[term])) and float(row[term]) > 0, term
    saved = load_config(run / "config.yaml")
    assert saved.distill == load_config(None, [*over, *recipe, "distill.feat_kd.names=[p3, p4]"]).distill


def _same(a, b, where: str) -> None:
    """Bitwise equal nested state (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class _Raise(HookBase):
    def after_epoch(self) -> None:
        if self.trainer.epoch + 1 == 1:
            raise KeyboardInterrupt


def test_off_last_epochs_logs_zero_kd_and_resumes_bitwise(base_overrides, tiny_data, tmp_path):
    tpath = _teacher(tiny_data, tmp_path / "teacher.pt")
    common = [
        *base_overrides,
        f"teacher={tpath}",
        "epochs=3",  # 2 steps per epoch; KD in epochs 1-2, off in epoch 3
        "distill.off_last_epochs=1",
        "distill.seg_kd=dist",
        "distill.feat_kd={names: [p3], kind: mgd}",  # MGD draws random masks: the RNG state must resume too
    ]
    ref = _train([*common, "name=ref"])
    rows = _rows(ref)
    for term in ("seg_kd", "det_kd", "feat_kd", "feat_kd_p3"):
        assert float(rows[0][term]) > 0 and float(rows[1][term]) > 0, term
        assert float(rows[2][term]) == 0.0, term
    assert float(rows[2]["alpha_seg"]) == 0.0 and float(rows[2]["loss"]) > 0

    with pytest.raises(KeyboardInterrupt):
        _train([*common, "name=cut"], hooks=[_Raise()])
    cut = _train([*common, "name=cut", "resume=true"])
    a = torch.load(ref / "weights" / "last.pt", weights_only=True)
    b = torch.load(cut / "weights" / "last.pt", weights_only=True)
    for key in ("model", "ema", "distill", "optimizer", "scheduler"):
        _same(a["train"][key], b["train"][key], key)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in _rows(cut)]


def test_ddp_kd_off_epochs_keep_every_parameter_in_the_step(tiny_data, tmp_path):
    """Under DDP (which expects a gradient for every parameter in every step) the KD-off epochs still train:
    the unused connectors get zero gradients (without them the second KD-off step fails in DDP's reducer)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    tpath = _teacher(tiny_data, tmp_path / "teacher.pt")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "ul")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "tools" / "train.py"), str(root / "configs" / "shapes_distill.yaml"), f"teacher={tpath}",
           f"data={tiny_data}", "model=yolo_mt_n", "imgsz=64", "batch=4", "workers=0", "device=cpu",
           f"project={tmp_path}", "name=ddp_off", "tensorboard=false", "eval_every=100", "epochs=3",
           "distill.off_last_epochs=2"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path / "ddp_off")
    assert float(rows[0]["feat_kd"]) > 0 and all(
        float(r[k]) == 0 for r in rows[1:] for k in ("seg_kd", "feat_kd")
    )
