"""Several segmentation tasks in one dataset (``seg_tasks``, masks under ``masks/<task>/<split>/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtkd.data.build import build_dataloader
from mtkd.data.check import check_dataset
from mtkd.data.collate import batch_masks
from mtkd.data.descriptor import load_data_yaml
from mtkd.data.shapes import ROAD, make_shapes
from mtkd.data.yolo_mask import YoloMaskSource
from mtkd.errors import DatasetError


@pytest.fixture(scope="module")
def two_task(tmp_path_factory) -> Path:
    return make_shapes(
        tmp_path_factory.mktemp("two") / "s", n_train=6, n_val=3, size=64, seed=3, seg_tasks=True
    )


@pytest.fixture(scope="module")
def one_task(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("one") / "s", n_train=6, n_val=3, size=64, seed=3)


def _write(tmp_path: Path, body: str) -> Path:
    for d in ("images/train", "labels/train", "masks/a/train", "masks/lane/train"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    p = tmp_path / "data.yaml"
    p.write_text("format: yolo_mask\ntrain: train\ndet_names: [car]\n" + body)
    return p


def test_descriptor_reads_tasks_in_order_and_infers_line_tasks(tmp_path):
    spec = load_data_yaml(_write(tmp_path, "seg_tasks:\n  a: [bg, x]\n  lane: {names: [bg, lane]}\n"))
    assert list(spec.seg_tasks) == ["a", "lane"] and spec.multi_seg
    assert spec.seg_tasks["a"].names == ["bg", "x"] and not spec.seg_tasks["a"].lines
    assert spec.seg_tasks["lane"].lines  # named like a lane task
    spec = load_data_yaml(
        _write(tmp_path, "seg_tasks:\n  a: {names: [bg, x], lines: true}\n  lane: [bg, l]\n")
    )
    assert spec.seg_tasks["a"].lines
    assert spec.mask_dirs("train") == {t: spec.root / "masks" / t / "train" for t in ("a", "lane")}
    with pytest.raises(
        DatasetError, match=r"data.yaml: field 'seg_tasks': this dataset has segmentation tasks a"
    ):
        _ = spec.seg_names  # code written for one task cannot silently take one of several


def test_single_task_descriptor_is_the_task_seg(one_task):
    spec = load_data_yaml(one_task)
    assert list(spec.seg_tasks) == ["seg"] and not spec.multi_seg
    assert spec.seg_names == spec.seg_tasks["seg"].names and spec.nc_seg == 6
    assert spec.mask_dirs("train") == {"seg": spec.root / "masks" / "train"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("seg_names: [bg, x]\nseg_tasks:\n  a: [bg, x]\n", r"field 'seg_names': both given"),
        ("", r"field 'seg_names': missing \(required\): give seg_names \(one task\) or seg_tasks"),
        ("seg_tasks: [a, b]\n", r"field 'seg_tasks': expected a mapping of task name -> class names"),
        ("seg_tasks:\n  det: [bg, x]\n", r"field 'seg_tasks.det': 'det' is reserved"),
        ("seg_tasks:\n  Lane-1: [bg, x]\n", r"field 'seg_tasks.Lane-1': a task name is lower-case"),
        ("seg_tasks:\n  a: [bg]\n", r"field 'seg_tasks.a': a task needs at least 2 classes"),
        ("seg_tasks:\n  a: [bg, bg]\n", r"field 'seg_tasks.a': duplicate class names \['bg'\]"),
        (
            "seg_tasks:\n  a: {names: [bg, x], line: true}\n",
            r"field 'seg_tasks.a.line': unknown field \(did you mean",
        ),
        ("seg_tasks:\n  a: {lines: true}\n", r"field 'seg_tasks.a.names': missing"),
        (
            "seg_tasks:\n  a: {names: [bg, x], lines: 1}\n",
            r"field 'seg_tasks.a.lines': expected true or false",
        ),
        ("seg_tasks:\n  a: [bg, x, y]\nignore_index: 2\n", r"collides with class of seg task 'a' 'y'"),
    ],
)
def test_descriptor_errors_name_the_file_and_field(tmp_path, body, message):
    with pytest.raises(DatasetError, match=message) as e:
        load_data_yaml(_write(tmp_path, body))
    assert str(e.value).startswith(str(tmp_path / "data.yaml")) and "\n" not in str(e.value)


def test_seg_tasks_need_the_yolo_mask_format(tmp_path):
    (tmp_path / "data.yaml").write_text("format: coco\ntrain: t\ndet_names: [a]\nseg_tasks:\n  x: [bg, y]\n")
    with pytest.raises(DatasetError, match=r"field 'seg_tasks': needs format yolo_mask"):
        load_data_yaml(tmp_path / "data.yaml", check_paths=False)


def test_missing_task_mask_folder_is_named(tmp_path):
    p = _write(tmp_path, "seg_tasks:\n  a: [bg, x]\n  b: [bg, y]\n")
    with pytest.raises(DatasetError, match=r"field 'train': folder .*masks/b/train does not exist"):
        load_data_yaml(p)


def test_two_task_shapes_are_the_one_task_images_with_overlapping_masks(two_task, one_task):
    """Same images and boxes as the one-task set; drivable = the road class; lane strokes lie on the drivable
    region (the tasks overlap, so they could not be one mask)."""
    a, b = two_task.parent, one_task.parent
    lane_px = 0
    for img in sorted((b / "images/train").glob("*.png")):
        assert (a / "images/train" / img.name).read_bytes() == img.read_bytes()
        assert (a / "labels/train" / f"{img.stem}.txt").read_text() == (
            b / "labels/train" / f"{img.stem}.txt"
        ).read_text()
        one = np.asarray(Image.open(b / "masks/train" / img.name))
        drivable = np.asarray(Image.open(a / "masks/drivable/train" / img.name))
        lane = np.asarray(Image.open(a / "masks/lane/train" / img.name))
        assert np.array_equal(drivable, (one == ROAD).astype(np.uint8))
        assert not (lane.astype(bool) & ~drivable.astype(bool)).any()
        lane_px += int(lane.sum())
    assert lane_px > 0
    assert check_dataset(two_task).ok


def test_reader_returns_every_task_and_check_dataset_names_a_bad_task_mask(two_task, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(two_task.parent, root)
    spec = load_data_yaml(root / "data.yaml")
    src = YoloMaskSource(spec, "train")
    sample = src[0]
    assert list(sample.masks) == ["drivable", "lane"]
    assert all(m.shape == sample.image.shape[:2] for m in sample.masks.values())
    bad = root / "masks/lane/train/000001.png"
    ids = np.asarray(Image.open(bad)).copy()
    ids[0, 0] = 7
    Image.fromarray(ids).save(bad)
    (root / "masks/drivable/train/000002.png").unlink()
    report = check_dataset(root / "data.yaml")
    text = [str(p) for p in report.problems]
    assert any(str(bad) in t and "mask values {7} are neither seg classes 0..1" in t for t in text)
    assert any("masks/drivable/train/000002.png" in t for t in text)
    assert set(report.stats["train"].pixels) == {"drivable", "lane"}
    assert "of task 'lane'" in report.summary()


def test_loader_batches_every_task_through_the_same_augmentation(two_task):
    spec = load_data_yaml(two_task)
    loader = build_dataloader(
        spec, "train", imgsz=64, batch=3, augment=True, shuffle=False, workers=0, seed=1
    )
    for batch in loader:
        masks = batch_masks(batch)
        assert "masks" not in batch and list(masks) == ["drivable", "lane"]
        d, ln = masks["drivable"], masks["lane"]
        assert d.shape == ln.shape == (3, 64, 64)
        # same geometric ops, nearest-exact resampling: a lane pixel stays on a drivable (or padding) pixel
        assert not ((ln == 1) & (d == 0)).any()
        assert ((d == 255) == (ln == 255)).all()  # the same padding in every task


def test_single_task_batches_keep_their_key(one_task):
    spec = load_data_yaml(one_task)
    batch = next(
        iter(build_dataloader(spec, "val", imgsz=64, batch=2, augment=False, shuffle=False, workers=0))
    )
    assert "seg_masks" not in batch and batch_masks(batch)["seg"] is batch["masks"]


def test_index_cache_serves_every_task_and_sees_a_changed_task_mask(two_task, tmp_path):
    import os
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(two_task.parent, root)
    past = 1_600_000_000  # older than the index's racy window
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))
    spec = load_data_yaml(root / "data.yaml")
    first = YoloMaskSource(spec, "train")
    assert (root / "labels" / "train.mtkd.npz").is_file() and (first.index.state == 0).all()
    second = YoloMaskSource(spec, "train")
    for i in range(len(second)):
        a, b = first[i], second[i]
        assert all(np.array_equal(a.masks[t], b.masks[t]) for t in ("drivable", "lane"))
    lane = root / "masks/lane/train/000000.png"
    Image.fromarray(np.full_like(np.asarray(Image.open(lane)), 9)).save(lane)
    os.utime(lane, (past + 5, past + 5))
    with pytest.raises(DatasetError, match=r"000000.png: mask values \{9\}"):
        YoloMaskSource(spec, "train")[0]
