"""DetectionEvaluator vs pycocotools COCOeval run directly on independently built COCO dicts."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mtkd.eval import DetectionEvaluator
from mtkd.eval.detection import BACKENDS

NAMES = ["car", "person", "sign"]
STATS = ["mAP50_95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
         "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]  # fmt: skip


def random_dataset(seed: int, n_images: int = 12, quantize_scores: bool = False):
    """Per-image preds/targets (torch, xyxy pixels); about 70% of GT boxes get a jittered detection, plus
    random false positives; some images have no GT or no predictions."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(n_images):
        h, w = int(rng.integers(200, 480)), int(rng.integers(200, 640))
        n = int(rng.integers(0, 7)) if i % 5 else 0
        xy = rng.uniform(0, [w - 10, h - 10], size=(n, 2))
        wh = rng.uniform(3, 180, size=(n, 2))
        gt = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        gl = rng.integers(0, len(NAMES), n)
        hit = rng.random(n) < 0.7
        jit = gt[hit] + rng.normal(0, 4, size=(hit.sum(), 4))
        jl = np.where(rng.random(hit.sum()) < 0.85, gl[hit], rng.integers(0, len(NAMES), hit.sum()))
        m = int(rng.integers(0, 4))
        fxy = rng.uniform(0, [w - 10, h - 10], size=(m, 2))
        fp = np.concatenate([fxy, fxy + rng.uniform(3, 150, size=(m, 2))], 1)
        boxes = np.concatenate([jit, fp]).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
        scores = rng.random(len(boxes))
        if quantize_scores:
            scores = np.round(scores * 4) / 4  # many ties
        labels = np.concatenate([jl, rng.integers(0, len(NAMES), m)]).astype(np.int64)
        if i % 7 == 3:  # an image without predictions
            boxes, scores, labels = boxes[:0], scores[:0], labels[:0]
        preds.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.tensor(scores),
                "labels": torch.tensor(labels),
            }
        )
        targets.append(
            {"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.tensor(gl), "image_size": (h, w)}
        )
    return preds, targets


def reference(preds, targets):
    """pycocotools COCOeval on COCO dicts built here, independently of mtkd's conversion."""
    images, anns, res = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append({"id": i + 10, "height": t["image_size"][0], "width": t["image_size"][1]})
        for b, c in zip(t["boxes"].double().tolist(), t["labels"].tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 10,
                    "category_id": c * 2 + 7,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, c in zip(p["boxes"].double().tolist(), p["scores"].double().tolist(), p["labels"].tolist()):
            res.append(
                {
                    "image_id": i + 10,
                    "category_id": c * 2 + 7,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": s,
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c * 2 + 7, "name": n} for c, n in enumerate(NAMES)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    rec = ev.eval["recall"][0, :, 0, -1]  # [T, K, A, M]: IoU 0.5, every class, area all, 100 dets
    recall50 = float(rec[rec > -1].mean())
    prec = ev.eval["precision"]
    per_class = {}
    for k, n in enumerate(NAMES):
        p = prec[:, :, k, 0, -1]
        per_class[n] = float(p[p > -1].mean()) if (p > -1).any() else None
    return ev.stats, per_class, recall50


def run(preds, targets, backend, batch=5):
    ev = DetectionEvaluator(NAMES, backend=backend)
    for s in range(0, len(preds), batch):
        ev.add(preds[s : s + batch], targets[s : s + batch])
    return ev.evaluate()["det"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True)])
def test_matches_pycocotools(backend, seed, ties):
    preds, targets = random_dataset(seed, quantize_scores=ties)
    stats, per_class, recall50 = reference(preds, targets)
    det = run(preds, targets, backend)
    assert 0.05 < det["mAP50"] < 0.95  # a non-trivial case
    for key, ref in zip(STATS, stats):
        if ref < 0:
            assert det[key] is None, key
        else:
            assert det[key] == pytest.approx(ref, abs=1e-6), key
    for name in NAMES:
        assert det["per_class_AP50_95"][name] == pytest.approx(per_class[name], abs=1e-6)
    # recall at IoU 0.5 (<= 100 dets), mean over classes: pycocotools' recall array read directly
    assert det["recall50"] == pytest.approx(recall50, abs=1e-6)
    # mAP is the mean of the per-class APs (COCO definition)
    valid = [v for v in det["per_class_AP50_95"].values() if v is not None]
    assert det["mAP50_95"] == pytest.approx(np.mean(valid), abs=1e-9)
    assert det["images"] == len(targets)
    assert det["instances"] == sum(len(t["labels"]) for t in targets)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_score_one(backend):
    _, targets = random_dataset(3)
    preds = [
        {"boxes": t["boxes"], "scores": torch.linspace(1, 0.5, len(t["labels"])), "labels": t["labels"]}
        for t in targets
    ]
    det = run(preds, targets, backend)
    for key in ("mAP50_95", "mAP50", "mAP75", "AR100", "recall50"):
        assert det[key] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in det["per_class_AP50_95"].values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions_score_zero(backend):
    _, targets = random_dataset(4)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    det = run([empty] * len(targets), targets, backend)
    assert det["mAP50_95"] == 0.0 and det["mAP50"] == 0.0 and det["AR100"] == 0.0 and det["recall50"] == 0.0
    assert all(v == 0.0 for v in det["per_class_AP50_95"].values())


def test_no_ground_truth_for_a_class_is_null():
    t = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0]), "image_size": (32, 32)}]
    p = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([0, 2]),
        }
    ]
    det = run(p, t, "faster_coco_eval")
    assert det["per_class_AP50_95"] == {"car": 1.0, "person": None, "sign": None}
    assert det["mAP_large"] is None and det["mAP_small"] == 1.0
    assert json.loads(json.dumps(det))["mAP_medium"] is None  # null in JSON


def test_nothing_processed_and_reset():
    ev = DetectionEvaluator(NAMES)
    assert ev.evaluate()["det"]["mAP50_95"] is None
    preds, targets = random_dataset(5)
    ev.add(preds, targets)
    ev.reset()
    assert ev.num_images == 0


def test_bad_labels_raise():
    ev = DetectionEvaluator(NAMES)
    t = [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([3]), "image_size": (8, 8)}]
    ev.add([{"boxes": torch.zeros(0, 4), "scores": [], "labels": []}], t)
    with pytest.raises(ValueError, match="outside"):
        ev.evaluate()
    with pytest.raises(ValueError, match="predictions for"):
        ev.add([], t)


def test_saved_json_reproduces_map_with_pycocotools(tmp_path):
    preds, targets = random_dataset(6)
    ev = DetectionEvaluator(NAMES)
    ev.add(preds, targets)
    det = ev.evaluate()["det"]
    pred_path, gt_path = ev.save_json(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        cev = COCOeval(gt, gt.loadRes(str(pred_path)), "bbox")
        cev.evaluate()
        cev.accumulate()
        cev.summarize()
    assert cev.stats[0] == pytest.approx(det["mAP50_95"], abs=1e-6)
    assert cev.stats[1] == pytest.approx(det["mAP50"], abs=1e-6)
    saved = json.loads(gt_path.read_text())
    assert [c["name"] for c in saved["categories"]] == NAMES
    first = next(t for t in targets if len(t["labels"]))
    b = first["boxes"][0].double().tolist()
    assert saved["annotations"][0]["bbox"] == pytest.approx([b[0], b[1], b[2] - b[0], b[3] - b[1]])
    assert saved["images"][0]["height"] == targets[0]["image_size"][0]
