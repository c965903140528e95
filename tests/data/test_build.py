"""Transforms, datasets and loaders: letterbox geometry, box/mask alignment under augmentation, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mtkd.data.build import build_dataloader, build_dataset
from mtkd.data.collate import collate
from mtkd.data.descriptor import load_data_yaml
from mtkd.data.samples import RawSample
from mtkd.data.transforms import PAD_VALUE, JointTransform, letterbox_geometry
from mtkd.errors import ConfigError, DatasetError

DET = ["ellipse", "rectangle", "triangle", "star"]
SEG = ["background", *DET]  # each det class k has its own seg class k + 1


def _object_sample(rng: np.random.Generator, h: int, w: int):
    """One image with at most one object per class, so class k's mask pixels are exactly object k's."""
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    lines = []
    cells = [(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]
    for k in rng.permutation(4)[: rng.integers(1, 5)]:
        y0, x0 = cells[len(lines)]
        s = int(rng.integers(8, min(h, w) // 2))
        cy, cx = y0 + int(rng.integers(0, h // 2)), x0 + int(rng.integers(0, w // 2))  # may leave the image
        obj = np.zeros((h, w), np.uint8)
        if k == 0:
            cv2.ellipse(obj, (cx, cy), (s // 2, s // 3), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        elif k == 1:
            cv2.rectangle(obj, (cx - s // 2, cy - s // 3), (cx + s // 2, cy + s // 3), 1, -1)
        else:
            n = 3 if k == 2 else 10
            ang = np.arange(n) * 2 * np.pi / n
            rad = np.where(np.arange(n) % 2 == 1, s / 4, s / 2) if k == 3 else np.full(n, s / 2)
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(obj, [pts], 1)
        obj = obj.astype(bool) & (mask == 0)
        if obj.sum() < 20:
            continue
        mask[obj] = k + 1
        ys, xs = np.nonzero(obj)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        lines.append(f"{k} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}")
    return image, mask, lines


@pytest.fixture
def objects_yaml(tmp_path, yolo_writer):
    rng = np.random.default_rng(0)
    samples = [_object_sample(rng, 72, 96) for _ in range(6)] + [
        _object_sample(rng, 90, 50) for _ in range(2)
    ]
    return yolo_writer(tmp_path / "objects", {"train": samples}, DET, SEG)


def test_augmentation_keeps_boxes_and_masks_aligned(objects_yaml):
    ds = build_dataset(load_data_yaml(objects_yaml), "train", imgsz=64, augment=True, seed=1)
    n_boxes, n_tight, flipped_or_scaled = 0, 0, 0
    raw_boxes = {i: ds.source[i].boxes for i in range(len(ds))}
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            mask, boxes, labels = item["mask"].numpy(), item["boxes"].numpy(), item["labels"].numpy()
            assert len(set(labels.tolist())) == len(labels) <= len(raw_boxes[i])
            for (x1, y1, x2, y2), k in zip(boxes, labels):
                ys, xs = np.nonzero(mask == k + 1)
                assert len(xs), f"box of class {k} has no mask pixels"
                px = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                # every pixel of the object lies in its box (nearest-neighbour mask vs exact box: 1 px)
                assert x1 - 1 <= px[0] and y1 - 1 <= px[1] and px[2] <= x2 + 1 and px[3] <= y2 + 1
                # and the box is tight around them, unless the crop clipped it (a clipped box of a
                # non-rectangular object is wider than its visible part: boxes carry no shape). 1 px for
                # ellipses/rectangles; 2 px for triangles/stars, whose thin tips vanish when downscaled
                if min(x1, y1) > 0 and max(x2, y2) < 64:
                    np.testing.assert_allclose([x1, y1, x2, y2], px, atol=1.0 if k < 2 else 2.0)
                    n_tight += 1
                n_boxes += 1
            flipped_or_scaled += not np.array_equal(boxes, raw_boxes[i])
    assert n_boxes > 50 and n_tight > 30 and flipped_or_scaled > 20


@pytest.mark.parametrize("hw", [(40, 60), (61, 17), (64, 64), (33, 97), (200, 150)])
def test_letterbox_geometry_matches_the_transform(hw):
    h, w = hw
    raw = RawSample(
        np.full((h, w, 3), 255, np.uint8),
        {"seg": np.zeros((h, w), np.uint8)},
        np.array([[0, 0, w, h]], np.float32),
        np.array([1]),
        path="x.png",
    )
    item = JointTransform(64, augment=False, ignore_index=250)(raw)
    scale, (top, left), (nh, nw) = letterbox_geometry(h, w, 64)
    assert item["scale"] == scale and item["pad"] == (top, left)
    content = (item["mask"] == 0).numpy()
    ys, xs = np.nonzero(content)
    assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (top, left, top + nh, left + nw)
    assert (item["mask"][~torch.from_numpy(content)] == 250).all()
    pad_pixels = item["image"][:, ~torch.from_numpy(content)]
    assert pad_pixels.dtype == torch.uint8 and (pad_pixels == PAD_VALUE).all()
    np.testing.assert_allclose(item["boxes"].numpy(), [[left, top, left + nw, top + nh]], atol=1e-4)
    # mapping back with scale/pad recovers the original box to within half a pixel
    back = (item["boxes"][0] - torch.tensor([left, top, left, top])) / scale
    np.testing.assert_allclose(back.numpy(), [0, 0, w, h], atol=0.5 / scale + 1e-4)


def test_validation_items_ignore_seed_and_epoch(shapes_copy):
    spec = load_data_yaml(shapes_copy)
    a = build_dataset(spec, "val", imgsz=64, augment=False, seed=0)
    b = build_dataset(spec, "val", imgsz=64, augment=False, seed=5)
    b.set_epoch(3)
    for i in range(len(a)):
        ia, ib = a[i], b[i]
        assert torch.equal(ia["image"], ib["image"]) and torch.equal(ia["boxes"], ib["boxes"])
    assert ia["image"].dtype == torch.uint8 and ia["image"].shape == (
        3,
        64,
        64,
    )  # 0-255, made float on the device
    assert ia["mask"].dtype == torch.uint8 and ia["image"].max() > 1


def _batches(loader):
    return [{k: v for k, v in b.items()} for b in loader]


def _same(xs, ys) -> bool:
    if len(xs) != len(ys):
        return False
    for a, b in zip(xs, ys):
        for k in a:
            va, vb = a[k], b[k]
            if torch.is_tensor(va) and not torch.equal(va, vb) or not torch.is_tensor(va) and va != vb:
                return False
    return True


def test_dataloader_with_workers_is_deterministic(shapes_copy):
    spec = load_data_yaml(shapes_copy)
    kw = dict(imgsz=64, batch=3, augment=True, shuffle=True)
    run1 = _batches(build_dataloader(spec, "train", workers=2, seed=3, **kw))
    run2 = _batches(build_dataloader(spec, "train", workers=2, seed=3, **kw))
    single = _batches(build_dataloader(spec, "train", workers=0, seed=3, **kw))
    other = _batches(build_dataloader(spec, "train", workers=2, seed=4, **kw))
    assert _same(run1, run2) and _same(run1, single) and not _same(run1, other)
    assert sum(b["images"].shape[0] for b in run1) == 8
    loader = build_dataloader(spec, "train", workers=2, seed=3, **kw)
    loader.set_epoch(1)
    epoch1 = _batches(loader)
    loader.set_epoch(1)
    assert not _same(run1, epoch1) and _same(epoch1, _batches(loader))


def test_collate_variable_box_counts():
    def item(n, fill):
        return {
            "image": torch.full((3, 32, 32), fill),
            "mask": torch.zeros(32, 32, dtype=torch.long),
            "boxes": torch.arange(4 * n, dtype=torch.float32).reshape(n, 4),
            "labels": torch.arange(n),
            "path": f"{n}.png",
            "orig_size": (32, 32),
            "pad": (0, 0),
            "scale": 1.0,
        }

    batch = collate([item(2, 0.1), item(0, 0.2), item(3, 0.3)])
    assert batch["images"].shape == (3, 3, 32, 32) and batch["masks"].shape == (3, 32, 32)
    assert batch["boxes"].shape == (5, 4) and batch["labels"].tolist() == [0, 1, 0, 1, 2]
    assert batch["batch_idx"].tolist() == [0, 0, 2, 2, 2] and batch["batch_idx"].dtype == torch.int64
    assert batch["paths"] == ["2.png", "0.png", "3.png"] and batch["orig_sizes"] == [(32, 32)] * 3


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_sample_raises_one_line_error_naming_file_and_line(shapes_copy, workers):
    label = shapes_copy.parent / "labels/train/000003.txt"
    lines = label.read_text().splitlines()
    label.write_text("".join(f"{ln}\n" for ln in [*lines, "0 0.5 0.5 0.2"]))
    loader = build_dataloader(
        load_data_yaml(shapes_copy), "train", imgsz=64, batch=2, workers=workers, augment=True, shuffle=False
    )
    with pytest.raises(DatasetError) as e:
        _batches(loader)
    assert str(e.value).startswith(f"{label}:{len(lines) + 1}: expected 5 fields") and "\n" not in str(
        e.value
    )


def test_listing_problems_and_bad_arguments_raise(shapes_copy):
    spec = load_data_yaml(shapes_copy)
    (shapes_copy.parent / "masks/train/000001.png").rename(shapes_copy.parent / "masks/train/extra.png")
    with pytest.raises(DatasetError, match="extra.png: mask file has no image"):
        build_dataset(spec, "train", imgsz=64, augment=False)
    with pytest.raises(DatasetError, match="no split 'test'"):
        build_dataset(spec, "test", imgsz=64, augment=False)
    with pytest.raises(ConfigError, match="imgsz"):
        build_dataset(spec, "val", imgsz=100, augment=False)
    with pytest.raises(ConfigError, match="batch"):
        build_dataloader(spec, "val", imgsz=64, batch=0, workers=0, augment=False, shuffle=False)


def test_batch_to_device_makes_images_float_in_unit_range_and_masks_int64():
    from mtkd.data.collate import batch_to_device, images_to_float

    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    batch = {
        "images": images,
        "masks": torch.full((2, 4, 4), 255, dtype=torch.uint8),
        "seg_masks": {"lane": torch.ones(2, 4, 4, dtype=torch.uint8)},
        "paths": ["a", "b"],
    }
    out = batch_to_device(batch, "cpu", channels_last=True)
    assert out["images"].dtype == torch.float32 and out["images"].is_contiguous(
        memory_format=torch.channels_last
    )
    assert out["images"][0, :, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0], abs=1e-7)
    assert torch.equal(out["images"], torch.from_numpy(images.numpy()).float().div_(255.0))
    assert (
        out["masks"].dtype == out["seg_masks"]["lane"].dtype == torch.int64 and int(out["masks"].max()) == 255
    )
    assert out["paths"] == ["a", "b"] and batch["images"].dtype == torch.uint8  # the input batch unchanged
    floats = torch.rand(1, 3, 2, 2)
    assert images_to_float(floats) is floats  # already float: left as it is


def test_worker_init_returns_after_the_parent_used_opencv_from_threads():
    """The dataset index decodes with OpenCV in a thread pool before the loader forks its workers; the
    worker's OpenCV set-up must not wait on the parent's thread-pool state (it did with setNumThreads(1))."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from mtkd.data.build import seed_worker

    image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: cv2.resize(image, (640, 640)), range(4)))
    worker = multiprocessing.get_context("fork").Process(target=seed_worker, args=(0,))
    worker.start()
    worker.join(timeout=60)
    hung = worker.is_alive()
    if hung:
        worker.kill()
        worker.join()
    assert not hung and worker.exitcode == 0
