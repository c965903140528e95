"""SegmentationEvaluator vs a direct numpy computation of dataset-level IoU."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch

from mtkd.errors import DatasetError
from mtkd.eval import SegmentationEvaluator

C, IGN = 5, 255


def random_batches(seed: int, n: int = 6, b: int = 3, hw=(24, 32)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(0, C - 1, (b, *hw), generator=g)  # class C-1 never in GT ...
        t[torch.rand(b, *hw, generator=g) < 0.1] = IGN
        p = torch.where(
            torch.rand(b, *hw, generator=g) < 0.6,
            t.clamp(max=C - 1),  # IGN → C-1: must not count
            torch.randint(0, C - 1, (b, *hw), generator=g),
        )  # ... nor predicted
        out.append((p, t))
    return out


def numpy_reference(batches):
    p = np.concatenate([b[0].numpy().ravel() for b in batches])
    t = np.concatenate([b[1].numpy().ravel() for b in batches])
    valid = t != IGN
    ious = []
    for c in range(C):
        inter = np.sum((p == c) & (t == c) & valid)
        union = np.sum(((p == c) | (t == c)) & valid)
        ious.append(inter / union if union else None)
    present = [v for v in ious if v is not None]
    return ious, float(np.mean(present)), float(np.sum((p == t) & valid) / valid.sum())


def test_matches_numpy_reference():
    batches = random_batches(0)
    ev = SegmentationEvaluator(C, IGN, class_names=list("abcde"))
    for p, t in batches:
        ev.add(p, t)
    seg = ev.evaluate()["seg"]
    ious, miou, acc = numpy_reference(batches)
    assert seg["mIoU"] == pytest.approx(miou, abs=1e-12)
    assert seg["pixel_acc"] == pytest.approx(acc, abs=1e-12)
    for name, ref in zip("abcde", ious):
        assert seg["per_class_IoU"][name] == (pytest.approx(ref, abs=1e-12) if ref is not None else None)
    assert seg["absent_classes"] == ["e"]  # never in GT nor predicted → left out of the mean
    cm = np.array(seg["confusion_matrix"])
    assert cm.shape == (C, C) and cm.sum() == sum(int((t != IGN).sum()) for _, t in batches)
    assert 0.2 < seg["mIoU"] < 0.9


def test_predicted_but_absent_from_gt_counts_as_zero():
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    p = t.clone()
    p[0, 0, 0] = 2  # class 2 predicted once, never in GT
    ev = SegmentationEvaluator(3)
    ev.add(p, t)
    seg = ev.evaluate()["seg"]
    assert seg["per_class_IoU"] == {"0": 15 / 16, "1": None, "2": 0.0}
    assert seg["mIoU"] == pytest.approx((15 / 16 + 0.0) / 2)
    assert seg["absent_classes"] == ["1"]


def test_perfect_predictions_and_ignore():
    _, t = random_batches(1)[0]
    p = t.clone()
    p[p == IGN] = 3  # whatever is predicted on ignored pixels does not count
    ev = SegmentationEvaluator(C, IGN)
    ev.add(p, t)
    seg = ev.evaluate()["seg"]
    assert seg["mIoU"] == 1.0 and seg["pixel_acc"] == 1.0 and seg["mAcc"] == 1.0


def test_nothing_labeled_gives_none():
    ev = SegmentationEvaluator(C, IGN)
    ev.add(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), IGN))
    seg = ev.evaluate()["seg"]
    assert seg["mIoU"] is None and seg["pixel_acc"] is None and len(seg["absent_classes"]) == C


def test_bad_mask_values_raise():
    ev = SegmentationEvaluator(C, IGN)
    with pytest.raises(DatasetError, match="neither a class id"):
        ev.add(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        ev.add(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))


def test_state_is_constant_size():
    ev = SegmentationEvaluator(C, IGN)
    batches = random_batches(2, n=4, b=2, hw=(64, 64))

    def feed(k):
        for i in range(k):
            ev.add(*batches[i % len(batches)])

    feed(5)  # warm up caches and lazy imports
    state = {k: (v.shape, v.dtype) if isinstance(v, torch.Tensor) else v for k, v in vars(ev).items()}
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    feed(200)  # 400 images of 64x64
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 20_000  # bytes; storing the predictions would need > 1.6 MB
    assert ev.confusion.shape == (C, C) and ev.confusion.dtype == torch.int64
    assert {k: (v.shape, v.dtype) if isinstance(v, torch.Tensor) else v for k, v in vars(ev).items()} == state
    assert int(ev.confusion.sum()) == sum(int((batches[i % 4][1] != IGN).sum()) for i in range(205))
