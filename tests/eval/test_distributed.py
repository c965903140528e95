"""Both evaluators under torch.distributed (gloo, 2 processes): each rank sees half of the images, every rank
must report exactly the single-process metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

DATA = textwrap.dedent("""
    import numpy as np, torch
    N, C, NAMES = 10, 4, ["x", "y", "z"]
    rng = np.random.default_rng(7)
    preds, targets = [], []
    for i in range(N):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (n, 2)); gt = np.concatenate([xy, xy + rng.uniform(4, 40, (n, 2))], 1)
        lab = rng.integers(0, 3, n)
        det = gt + rng.normal(0, 3, gt.shape)
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        preds.append({"boxes": torch.tensor(det), "scores": torch.tensor(rng.random(n)), "labels": torch.tensor(lab)})
        targets.append({"boxes": torch.tensor(gt), "labels": torch.tensor(lab), "image_size": (128, 128)})
    g = torch.Generator().manual_seed(0)
    seg_t = torch.randint(0, C, (N, 16, 16), generator=g); seg_t[:, 0] = 255
    seg_p = torch.where(torch.rand(N, 16, 16, generator=g) < 0.7, seg_t.clamp(max=C - 1), torch.zeros_like(seg_t))
""")

WORKER = DATA + textwrap.dedent("""
    import sys, json
    import torch.distributed as dist
    from mtkd.eval import DetectionEvaluator, SegmentationEvaluator
    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
    det, seg = DetectionEvaluator(NAMES), SegmentationEvaluator(C, 255)
    for i in range(rank, N, world):
        det.add([preds[i]], [targets[i]])
        seg.add(seg_p[i : i + 1], seg_t[i : i + 1])
    res = {**det.evaluate(), **seg.evaluate(), "local": det.num_images}
    if rank == 0:  # after evaluate(), saving needs no collective: rank 0 alone must not hang
        det.save_json(out + ".coco")
    json.dump(res, open(out, "w"))
    dist.destroy_process_group()
""")


def single_process():
    from mtkd.eval import DetectionEvaluator, SegmentationEvaluator

    ns: dict = {}
    exec(DATA, ns)
    det, seg = DetectionEvaluator(ns["NAMES"]), SegmentationEvaluator(ns["C"], 255)
    det.add(ns["preds"], ns["targets"])
    seg.add(ns["seg_p"], ns["seg_t"])
    return {**det.evaluate(), **seg.evaluate()}


@pytest.mark.skipif(
    not __import__("torch").distributed.is_available(), reason="torch.distributed unavailable"
)
def test_two_ranks_match_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                "2",
                str(tmp_path / "init"),
                str(tmp_path / f"out{r}.json"),
            ],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    ref = single_process()
    for r in range(2):
        got = json.loads((tmp_path / f"out{r}.json").read_text())
        assert got["local"] == 5  # each rank processed half ...
        assert got["det"]["images"] == 10  # ... and evaluated all of them
        assert got["det"]["mAP50_95"] == pytest.approx(ref["det"]["mAP50_95"], abs=1e-12)
        assert got["det"]["per_class_AP50"] == pytest.approx(ref["det"]["per_class_AP50"], abs=1e-12)
        assert got["seg"]["confusion_matrix"] == ref["seg"]["confusion_matrix"]
        assert got["seg"]["mIoU"] == pytest.approx(ref["seg"]["mIoU"], abs=1e-12)
    saved = json.loads((tmp_path / "out0.json.coco" / "ground_truth.json").read_text())
    assert len(saved["images"]) == 10
    assert 0.1 < ref["det"]["mAP50_95"] < 1.0 and 0.1 < ref["seg"]["mIoU"] < 1.0
