"""The validation letterbox done directly with OpenCV equals albumentations' (``build_compose(augment=False)``),
the pipeline it replaces: same pixels, same mask ids, same boxes to float rounding, same labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtkd.data.samples import RawSample
from mtkd.data.transforms import JointTransform, build_compose, letterbox


def _raw(h, w, boxes, tasks=("seg",), seed=0):
    rng = np.random.default_rng(seed)
    masks = {t: rng.integers(0, 4, (h, w), dtype=np.uint8) for t in tasks}
    for m in masks.values():
        m[: h // 5, : w // 7] = 255
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.arange(len(b), dtype=np.int64) % 3
    return RawSample(
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8), masks, b, labels, Path(f"im_{h}x{w}.png")
    )


CASES = [
    (48, 80, [(0, 0, 80, 48), (3.5, 4.25, 20.0, 30.5), (79.0, 47.0, 80.0, 48.0)]),  # landscape, upscaled
    (100, 37, [(1, 2, 36, 99), (10.2, 50.7, 10.9, 51.1)]),  # portrait, downscaled, a tiny box
    (64, 64, [(5, 5, 60, 60)]),  # already the size: no resize, no padding
    (33, 200, []),  # no boxes, strong letterbox
]


@pytest.mark.parametrize("h, w, boxes", CASES)
@pytest.mark.parametrize("tasks", [("seg",), ("drivable", "lane")])
def test_letterbox_equals_albumentations(h, w, boxes, tasks):
    raw = _raw(h, w, boxes, tasks)
    ref = build_compose(64, augment=False, ignore_index=255)(
        image=raw.image, masks=list(raw.masks.values()), bboxes=raw.boxes, labels=raw.labels
    )
    got = letterbox(raw, 64, 255)
    np.testing.assert_array_equal(got["image"], ref["image"])
    assert len(got["masks"]) == len(tasks)
    for m, r in zip(got["masks"], ref["masks"]):
        np.testing.assert_array_equal(m, r)
    np.testing.assert_allclose(got["bboxes"], np.asarray(ref["bboxes"]).reshape(-1, 4), atol=1e-4)
    np.testing.assert_array_equal(got["labels"], np.asarray(ref["labels"]))


def test_validation_item_uses_the_letterbox_and_keeps_the_sample():
    raw = _raw(48, 80, CASES[0][2])
    before = raw.image.copy(), raw.masks["seg"].copy()
    item = JointTransform(64, augment=False, ignore_index=255)(raw)
    assert item["image"].shape == (3, 64, 64) and item["mask"].dtype.is_floating_point is False
    assert item["pad"] == (13, 0) and item["scale"] == pytest.approx(0.8)
    assert (item["mask"][:13] == 255).all()  # the letterbox padding is ignore_index
    np.testing.assert_array_equal(raw.image, before[0])  # the raw arrays are not written to
    np.testing.assert_array_equal(raw.masks["seg"], before[1])
