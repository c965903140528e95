"""The sample index: validated once, cached next to the data, invalidated by changes, never trusted blindly;
OpenCV decoding only where it gives PIL's exact pixels; persistent workers that follow the epoch."""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mtkd.data import index as index_mod
from mtkd.data import yolo_mask
from mtkd.data.build import build_dataloader, build_dataset
from mtkd.data.check import check_dataset
from mtkd.data.coco import CocoSource
from mtkd.data.descriptor import load_data_yaml
from mtkd.data.index import ARRAYS, FAST_IMAGE, FAST_MASK, PROBLEM, UNTRUSTED, VALID
from mtkd.data.samples import SampleError, cv2_read, raise_first, read_image
from mtkd.data.yolo_mask import YoloMaskSource
from mtkd.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


def _age(*paths: Path, seconds: float = 600) -> None:
    """Date every file under ``paths`` ``seconds`` ago (files younger than RACY_S are not trusted)."""
    t = time.time() - seconds
    for root in paths:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file():
                os.utime(p, (t, t))


@pytest.fixture
def aged(shapes_copy) -> Path:
    _age(shapes_copy.parent)
    return shapes_copy


@pytest.fixture
def index_log():
    """Messages of ``mtkd.data.index`` (INFO and up), whatever logging the CLI tests set up."""
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("mtkd.data.index")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _cache(yaml_path: Path, split: str = "train") -> Path:
    return yaml_path.parent / "labels" / f"{split}.mtkd.npz"


def _legacy(src: YoloMaskSource, i: int):
    """Sample ``i`` read and checked from its files, as every read was before the index."""
    sample, problems = yolo_mask.load_sample(src.items[i], src.spec)
    raise_first(problems)
    return sample


def _same_sample(a, b) -> bool:
    return (
        a.image.dtype == b.image.dtype
        and np.array_equal(a.image, b.image)
        and a.mask.dtype == b.mask.dtype
        and np.array_equal(a.mask, b.mask)
        and a.boxes.dtype == b.boxes.dtype
        and np.array_equal(a.boxes, b.boxes)
        and a.labels.dtype == b.labels.dtype
        and np.array_equal(a.labels, b.labels)
        and a.path == b.path
    )


def test_split_is_validated_once_and_read_from_the_cache(aged, index_log, monkeypatch):
    spec = load_data_yaml(aged)
    first = YoloMaskSource(spec, "train")
    assert (first.index.state == VALID).all()
    assert (first.index.fast == FAST_IMAGE | FAST_MASK).all()  # PNG RGB images, L masks: lossless, identical
    with np.load(_cache(aged), allow_pickle=False) as z:
        assert set(z.files) == {"meta", *ARRAYS}
        assert json.loads(z["meta"].item())["kind"] == "mtkd-sample-index"
    assert sum("indexed 8 sample(s) of split 'train'" in m for m in index_log) == 1
    calls = []
    monkeypatch.setattr(yolo_mask, "load_sample", lambda *a: calls.append(a) or (None, []))
    again = YoloMaskSource(spec, "train")  # from the cache: nothing parsed or validated, on load either
    got = [again[i] for i in range(len(again))]
    assert not calls and sum("indexed" in m for m in index_log) == 1
    monkeypatch.undo()
    assert all(_same_sample(g, _legacy(again, i)) for i, g in enumerate(got))
    assert _same_sample(again[-1], got[-1])


def _batches(loader) -> list[dict]:
    return [dict(b) for b in loader]


def _same(xs: list[dict], ys: list[dict]) -> bool:
    if len(xs) != len(ys):
        return False
    for a, b in zip(xs, ys):
        for k in a:
            va, vb = a[k], b[k]
            if torch.is_tensor(va) and not torch.equal(va, vb) or not torch.is_tensor(va) and va != vb:
                return False
    return True


def test_batches_match_uncached_reads_and_persistent_workers_follow_the_epoch(aged, monkeypatch):
    spec = load_data_yaml(aged)
    kw = dict(imgsz=64, batch=3, augment=True, shuffle=True, seed=5)
    loader = build_dataloader(spec, "train", workers=2, **kw)
    assert loader.persistent_workers and (loader.dataset.source.index.state == VALID).all()
    cached, pids = {}, []
    for epoch in (0, 1, 0):  # back to 0: the workers must not keep the highest epoch they saw
        loader.set_epoch(epoch)
        cached.setdefault(epoch, []).append(_batches(loader))
        pids.append(sorted(w.pid for w in loader._iterator._workers))
    assert pids[0] == pids[1] == pids[2]  # the same worker processes served every epoch
    assert _same(cached[0][0], cached[0][1]) and not _same(cached[0][0], cached[1][0])
    single = build_dataloader(spec, "train", workers=0, **kw)
    monkeypatch.setattr(yolo_mask, "read_indexed", lambda *a, **k: None)  # every sample read and checked
    uncached = build_dataloader(spec, "train", workers=0, **kw)
    for epoch in (0, 1):
        for other in (single, uncached):
            other.set_epoch(epoch)
            assert _same(_batches(other), cached[epoch][0]), (epoch, other is uncached)


def test_dataset_epoch_is_shared_with_worker_processes(shapes_copy):
    ds = build_dataset(load_data_yaml(shapes_copy), "train", imgsz=64, augment=True)
    ds.set_epoch(3)
    assert ds.epoch == 3 and ds._epoch.is_shared()
    ds.epoch = 4
    assert ds.epoch == 4


def test_changed_files_are_reindexed_and_check_dataset_reads_every_file(aged, index_log):
    spec, root = load_data_yaml(aged), aged.parent
    YoloMaskSource(spec, "train")
    label = root / "labels/train/000002.txt"
    label.write_text(label.read_text() + "0 0.5 0.5 0.2\n")  # size and mtime change: re-indexed
    _age(label, seconds=300)
    src = YoloMaskSource(spec, "train")
    assert src.index.state[2] == PROBLEM and (np.delete(src.index.state, 2) == VALID).all()
    assert index_log[-1].startswith("indexed 1 sample(s) of split 'train'")  # only the changed one
    assert "samples with problems: 1" in index_log[-1]
    with pytest.raises(SampleError) as e:
        src[2]
    with pytest.raises(SampleError) as legacy:
        _legacy(src, 2)
    assert str(e.value) == str(legacy.value) and "expected 5 fields" in str(e.value)
    # an edit that keeps the size and the mtime is invisible to the cache key (as to Ultralytics' cache):
    # tools/check_dataset.py never uses the cache, so it still lists the problem
    other = next(p for p in sorted((root / "labels/train").glob("*.txt")) if p.read_text().strip())
    st, text = other.stat(), other.read_text()
    assert text[0] in "0123"
    other.write_text("7" + text[1:])
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert any(p.path == other and "class id 7" in p.message for p in check_dataset(aged).problems)


def _rewrite(cache: Path, change, *, digest: bool = True, meta=None) -> None:
    """Change the cached arrays in place (with a matching digest unless ``digest=False``)."""
    with np.load(cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    fields = json.loads(arrays.pop("meta").item())
    change(arrays)
    if digest:
        fields["digest"] = index_mod._digest(arrays)
    with open(cache, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(fields) if meta is None else meta), **arrays)


def _set(key, fn):
    return lambda a: a.__setitem__(key, fn(a[key]))


DAMAGE = {
    "garbage": lambda c: c.write_bytes(b"not an npz file"),
    "truncated": lambda c: c.write_bytes(c.read_bytes()[: c.stat().st_size // 2]),
    "pickled": lambda c: _rewrite(c, _set("names", lambda v: np.array(list(v), dtype=object))),
    "edited_without_digest": lambda c: _rewrite(c, _set("labels", lambda v: v * 0), digest=False),
    "label_out_of_range": lambda c: _rewrite(c, _set("labels", lambda v: v + 50)),
    "box_outside": lambda c: _rewrite(c, _set("boxes", lambda v: v + 1000)),
    "bad_state": lambda c: _rewrite(c, _set("state", lambda v: v + 7)),
    "bad_offsets": lambda c: _rewrite(c, _set("offsets", lambda v: v[::-1].copy())),
    "duplicate_names": lambda c: _rewrite(c, _set("names", lambda v: np.full_like(v, v[0]))),
    "short_keys": lambda c: _rewrite(c, _set("keys", lambda v: v.astype("S8"))),
    "wrong_dtype": lambda c: _rewrite(c, _set("hw", lambda v: v.astype(np.float64))),
    "meta_not_json": lambda c: _rewrite(c, lambda a: None, meta="{'kind': 1"),
    "meta_not_text": lambda c: _rewrite(c, lambda a: None, meta=np.arange(3)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_ignored_and_rebuilt(damage, aged, index_log):
    spec, cache = load_data_yaml(aged), _cache(aged)
    YoloMaskSource(spec, "train")
    DAMAGE[damage](cache)
    src = YoloMaskSource(spec, "train")  # no traceback: a warning, and the index is rebuilt from the files
    assert any(m.startswith(f"{cache}: ignoring the dataset index") for m in index_log), index_log
    assert (src.index.state == VALID).all() and all(_same_sample(src[i], _legacy(src, i)) for i in range(8))
    index_log.clear()
    YoloMaskSource(spec, "train")  # the rewritten cache is sound
    assert not index_log


def test_cache_of_another_version_or_class_list_is_replaced_quietly(aged, index_log):
    spec, cache = load_data_yaml(aged), _cache(aged)
    YoloMaskSource(spec, "train")
    with np.load(cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
    with open(cache, "wb") as f:  # an older format, even one without some of today's arrays
        np.savez(
            f, meta=np.array(json.dumps({"kind": "mtkd-sample-index", "version": 0})), names=arrays["names"]
        )
    index_log.clear()
    assert (YoloMaskSource(spec, "train").index.state == VALID).all()
    assert len(index_log) == 1 and index_log[0].startswith("indexed 8 sample(s)")  # no warning
    aged.write_text(aged.read_text().replace("star]", "star, extra]"))  # one more det class: a new key
    index_log.clear()
    assert (YoloMaskSource(load_data_yaml(aged), "train").index.state == VALID).all()
    assert len(index_log) == 1 and index_log[0].startswith("indexed 8 sample(s)")


def test_unwritable_cache_keeps_the_index_in_memory_and_says_so_once(aged, index_log, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    spec = load_data_yaml(aged)
    srcs = [YoloMaskSource(spec, "train") for _ in range(2)]
    said = [m for m in index_log if "cannot write the dataset index" in m]
    assert len(said) == 1 and said[0].startswith(f"{_cache(aged)}: ") and "permission denied" in said[0]
    assert not _cache(aged).exists() and not list(_cache(aged).parent.glob("*.tmp"))
    assert all((s.index.state == VALID).all() for s in srcs)
    assert all(_same_sample(srcs[1][i], _legacy(srcs[1], i)) for i in range(8))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_dataset_folder_is_not_an_error(aged):
    labels = aged.parent / "labels"
    labels.chmod(0o500)
    try:
        src = YoloMaskSource(load_data_yaml(aged), "train")
        assert (src.index.state == VALID).all() and not _cache(aged).exists()
    finally:
        labels.chmod(0o700)


def test_young_files_are_trusted_only_once_they_are_old_enough(aged, monkeypatch):
    spec = load_data_yaml(aged)
    monkeypatch.setattr(index_mod, "RACY_S", 1e9)  # every file counts as just written
    young = YoloMaskSource(spec, "train")
    assert (young.index.state == UNTRUSTED).all() and _cache(aged).exists()
    assert all(_same_sample(young[i], _legacy(young, i)) for i in range(8))  # read the validating way
    monkeypatch.setattr(index_mod, "RACY_S", 0.0)
    assert (YoloMaskSource(spec, "train").index.state == VALID).all()
    with np.load(_cache(aged), allow_pickle=False) as z:
        assert (z["state"] == VALID).all()  # and the cache was brought up to date


@pytest.mark.parametrize("limit", [1000, 3000])  # 64x64 images: PIL raises over 2x the limit, warns over 1x
def test_pil_pixel_limit_holds_when_indexing_in_threads(limit, aged, monkeypatch):
    spec = load_data_yaml(aged)
    assert (YoloMaskSource(spec, "train").index.state == VALID).all()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # part of the cache key: indexed again
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    filters = list(warnings.filters)
    src = YoloMaskSource(spec, "train")
    assert (src.index.state == PROBLEM).all() and warnings.filters == filters  # nothing leaked
    with pytest.raises(SampleError) as e:
        src[0]
    with pytest.raises(SampleError) as legacy:
        _legacy(src, 0)
    assert str(e.value) == str(legacy.value) and "over PIL's pixel limit" in str(e.value)


def _jpeg_set(root: Path, yolo_writer) -> tuple[Path, list[str]]:
    """A yolo_mask set whose images are JPEG variants (and a truncated one); returns data.yaml and kinds."""
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), (5, 5), 0)
    yaml_path = yolo_writer(
        root, {"train": [(base, np.zeros((48, 80), np.uint8), ["0 0.5 0.5 0.25 0.5"])] * 9}, ["a"], ["bg"]
    )
    kinds = ["444", "422", "420", "progressive", "grey", "opencv", "exif_rotated", "cmyk", "truncated"]
    for i, kind in enumerate(kinds):
        png = root / "images/train" / f"{i:04d}.png"
        jpg = png.with_suffix(".jpg")
        im = Image.fromarray(base)
        if kind in ("444", "422", "420"):
            im.save(jpg, quality=90, subsampling=("444", "422", "420").index(kind))
        elif kind == "progressive":
            im.save(jpg, quality=75, progressive=True)
        elif kind == "grey":
            im.convert("L").save(jpg, quality=90)
        elif kind == "opencv":
            cv2.imwrite(str(jpg), base[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 85])
        elif kind == "exif_rotated":  # PIL does not apply the orientation, so neither may OpenCV
            exif = im.getexif()
            exif[0x0112] = 6
            im.save(jpg, quality=90, exif=exif)
        elif kind == "cmyk":
            im.convert("CMYK").save(jpg, quality=90)
        else:
            im.save(jpg, quality=90)
            jpg.write_bytes(jpg.read_bytes()[:-200])
        png.unlink()
    return yaml_path, kinds


def test_opencv_decodes_only_images_it_decodes_like_pil(tmp_path, yolo_writer):
    yaml_path, kinds = _jpeg_set(tmp_path / "jpegs", yolo_writer)
    _age(tmp_path)
    src = YoloMaskSource(load_data_yaml(yaml_path), "train")
    for i, kind in enumerate(kinds):
        ref, problems = read_image(src.items[i].image)
        if kind == "truncated":  # OpenCV would decode it (grey fill); PIL refuses it, and so does the reader
            assert problems and src.index.state[i] == PROBLEM
            with pytest.raises(SampleError, match="image is unreadable"):
                src[i]
            continue
        assert src.index.state[i] == VALID and not problems
        fast = cv2_read(src.items[i].image)
        assert bool(src.index.fast[i] & FAST_IMAGE) == (fast is not None and np.array_equal(fast, ref)), kind
        assert np.array_equal(src[i].image, ref) and src[i].image.shape == (48, 80, 3)
    print({k: bool(src.index.fast[i] & FAST_IMAGE) for i, k in enumerate(kinds)})


def _coco_set(root: Path, masks: bool) -> Path:
    (root / "pics").mkdir(parents=True)
    (root / "ann").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (name, (h, w)) in enumerate((("a.jpg", (40, 60)), ("b.png", (50, 50)), ("c.jpg", (30, 70)))):
        pixels = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (3, 3), 0)
        Image.fromarray(pixels).save(root / "pics" / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        poly = [5, 5, 25, 5, 25, 20, 5, 20]
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 15], "iscrowd": 0})
        anns[-1]["segmentation"] = [poly]
        if masks:
            (root / "pm").mkdir(exist_ok=True)
            Image.fromarray((np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)).save(
                root / "pm" / f"{Path(name).stem}.png"
            )
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "car"}]}
    (root / "ann" / "train.json").write_text(json.dumps(data))
    split = "{images: pics, annotations: ann/train.json" + (", masks: pm}" if masks else "}")
    (root / "data.yaml").write_text(
        f"path: .\nformat: coco\ntrain: {split}\ndet_names: [car]\nseg_names: [background, car, road]\n"
    )
    return root / "data.yaml"


@pytest.mark.parametrize("masks", [False, True])
def test_coco_split_is_indexed_too(tmp_path, masks, monkeypatch):
    from mtkd.data import coco

    yaml_path = _coco_set(tmp_path / "coco", masks)
    _age(tmp_path)
    spec = load_data_yaml(yaml_path)
    CocoSource(spec, "train")
    assert (tmp_path / "coco/ann/train.mtkd.npz").is_file()
    calls = []
    validating = coco.load_sample
    monkeypatch.setattr(coco, "load_sample", lambda *a: calls.append(a) or validating(*a))
    src = CocoSource(spec, "train")  # from the cache
    assert (src.index.state == VALID).all() and src.index.fast.tolist() == [
        FAST_IMAGE | FAST_MASK * masks
    ] * 3
    got = [src[i] for i in range(3)]
    assert not calls
    monkeypatch.undo()
    for i, g in enumerate(got):
        ref, problems = src._validate(i)
        assert not problems and _same_sample(g, ref)


def test_loader_options(shapes_copy):
    spec = load_data_yaml(shapes_copy)
    kw = dict(imgsz=64, batch=2, augment=False, shuffle=False)
    w0 = build_dataloader(spec, "val", workers=0, **kw)
    assert not w0.persistent_workers and w0.prefetch_factor is None and not w0.pin_memory
    w2 = build_dataloader(spec, "val", workers=2, pin_memory=True, prefetch_factor=4, **kw)
    assert w2.persistent_workers and w2.prefetch_factor == 4 and w2.pin_memory
    assert not build_dataloader(spec, "val", workers=2, persistent_workers=False, **kw).persistent_workers
    with pytest.raises(ConfigError, match="prefetch_factor"):
        build_dataloader(spec, "val", workers=2, prefetch_factor=0, **kw)
