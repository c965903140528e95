"""Shared parts of the source converters: the ``Plan`` a source produces, annotation reading, boxes from masks.

A converter module (``camvid``, ``cityscapes``, ``bdd100k``) turns its source layout into a ``Plan``: the located
source root, the class names, one ``Item`` per image of each split (sorted by stem), the images it skipped
because an annotation file is missing, and a picklable ``convert(item) -> Converted`` that reads one image's
annotations. ``mtkd.data.prepare.writer`` then writes every item in the ``yolo_mask`` layout.

Box rules shared by the converters:
- Boxes are in pixel-edge coordinates: ``x1`` = first column, ``x2`` = last column + 1 (rows likewise), so a
  one-pixel region is a 1x1 box; boxes are clipped to the image.
- ``component_boxes`` (CamVid): ``cv2.connectedComponentsWithStats`` with 8-connectivity (diagonal neighbours
  join) on one class's binary mask; one component = one box.
- ``region_boxes`` (Cityscapes): one box per instance id, around all of its pixels (an occluded instance seen
  in two parts is still one box).
- A region (component or instance) of fewer than ``min_area`` pixels gets no box; its pixels stay in the mask.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtkd.data.samples import pil_open
from mtkd.errors import DatasetError

#: image files a source may hold (the ``yolo_mask`` reader accepts the same suffixes)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: mask value of unlabeled pixels in every converted dataset
IGNORE_INDEX = 255
#: default ``--min-area``: regions (or BDD boxes) under this many pixels get no box
DEFAULT_MIN_AREA = 16
#: PIL modes of single-channel id images (8-bit, palette, 16/32-bit integer)
_ID_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
#: (det class id, x1, y1, x2, y2) in pixels of the image
Box = tuple[int, float, float, float, float]


@dataclass(frozen=True)
class Item:
    """One source image and its annotation files (in the order its converter expects them)."""

    stem: str
    image: Path
    annotations: tuple[Path, ...]


@dataclass
class Converted:
    """One converted image: uint8 ``[H, W]`` seg class ids (a dict task -> mask for a plan with ``seg_tasks``),
    boxes, and objects skipped by reason/category."""

    mask: np.ndarray | dict[str, np.ndarray]
    boxes: list[Box]
    skipped: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Plan:
    """What a converter found in SRC, ready for the writer.

    Attributes:
        source: the source name (``camvid`` ...).
        root: the located source root (SRC itself or the folder inside it that holds the layout).
        det_names / seg_names: class names of the output (det class id / mask value = index); ``seg_names`` of
            the first task when ``seg_tasks`` is given.
        description: one line for the ``description`` field of ``data.yaml``.
        splits: split name -> items, sorted by stem; only splits that have images.
        missing: split name -> annotation files that were expected but absent (their images are skipped).
        convert: picklable ``Item -> Converted`` (a module-level function or a ``functools.partial`` of one).
        notes: lines printed with the summary (e.g. a source's known quirks found in this copy).
        seg_tasks: task -> class names for a several-task output (``masks/<task>/<split>/``, ``seg_tasks`` in
            ``data.yaml``); ``None``: one task, ``seg_names``.
    """

    source: str
    root: Path
    det_names: tuple[str, ...]
    seg_names: tuple[str, ...]
    description: str
    splits: dict[str, list[Item]]
    missing: dict[str, list[Path]]
    convert: Callable[[Item], Converted]
    notes: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX
    seg_tasks: dict[str, tuple[str, ...]] | None = None


def list_images(folder: Path, suffix: str = "") -> list[tuple[str, Path]]:
    """``(stem, path)`` of the image files in ``folder`` whose names end with ``suffix`` + an image extension,
    sorted by name; ``stem`` is the name without that ending. Two files with one stem are a ``DatasetError``."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES or not p.stem.endswith(suffix):
            continue
        stem = p.stem[: len(p.stem) - len(suffix)] if suffix else p.stem
        if stem in found:
            raise DatasetError(f"{p}: two images with the stem '{stem}' ({found[stem].name} and {p.name})")
        found[stem] = p
    return sorted(found.items())


def pair(
    images: Iterable[tuple[str, Path]], annotations: Callable[[str, Path], tuple[Path, ...]]
) -> tuple[list[Item], list[Path]]:
    """Items for the images whose annotation files all exist, and for each other image its first missing one."""
    items, missing = [], []
    for stem, image in images:
        paths = annotations(stem, image)
        absent = [p for p in paths if not p.is_file()]
        if absent:
            missing.append(absent[0])
        else:
            items.append(Item(stem, image, paths))
    return items, missing


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a ``DatasetError`` saying which folder was expected."""
    if not path.is_dir():
        raise DatasetError(f"{path}: folder not found; expected {what}")
    return path


def image_size(path: Path) -> tuple[int, int]:
    """``(W, H)`` of an image from its header; a ``DatasetError`` naming it when it cannot be read."""
    from PIL import UnidentifiedImageError

    try:
        with pil_open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: image is unreadable ({type(e).__name__}: {e})") from None


def read_ids(path: Path, what: str, *, image: Path, wh: tuple[int, int]) -> np.ndarray:
    """A single-channel annotation PNG (8- or 16-bit class/instance ids) as an integer array ``[H, W]``.

    ``DatasetError`` naming ``path`` when it is unreadable, has colour channels (a colour-coded label image
    instead of ids) or is not the size ``wh`` of ``image``.
    """
    from PIL import UnidentifiedImageError

    try:
        with pil_open(path) as im:
            mode = im.mode
            ids = np.asarray(im) if mode in _ID_MODES else None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: {what} is unreadable ({type(e).__name__}: {e})") from None
    if ids is None:
        raise DatasetError(
            f"{path}: {what} must be a single-channel PNG of ids (mode L, P or 16-bit), got mode {mode}"
        )
    if (ids.shape[1], ids.shape[0]) != tuple(wh):
        raise DatasetError(
            f"{path}: {what} is {ids.shape[1]}x{ids.shape[0]} (WxH) but its image {image.name} is {wh[0]}x{wh[1]}"
        )
    return ids if ids.dtype in (np.uint8, np.uint16) else ids.astype(np.int64)


def present_values(ids: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an id array (by ``bincount`` for 8/16-bit arrays: linear, not a sort)."""
    if ids.dtype.kind == "u" and ids.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(ids.ravel()))
    return np.unique(ids)


def check_ids(ids: np.ndarray, allowed: Iterable[int], path: Path, what: str, expected: str) -> None:
    """``DatasetError`` naming ``path`` and up to 5 values of ``ids`` that are not in ``allowed``."""
    values = present_values(ids)
    bad = np.setdiff1d(values, np.asarray(sorted(allowed), dtype=np.int64))
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise DatasetError(f"{path}: {what} has id(s) {shown} outside the known range ({expected})")


def lookup(table: Mapping[int, int], size: int, default: int = IGNORE_INDEX) -> np.ndarray:
    """A uint8 lookup array of ``size`` entries: ``table[i]`` where given, else ``default``."""
    lut = np.full(size, default, np.uint8)
    for k, v in table.items():
        lut[k] = v
    return lut


def component_boxes(binary: np.ndarray, cls: int, min_area: int) -> tuple[list[Box], int]:
    """One box per 8-connected component of ``binary`` with at least ``min_area`` pixels, and the number of
    smaller components (which get no box)."""
    import cv2

    if not binary.any():
        return [], 0
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    boxes, small = [], 0
    for x, y, w, h, area in stats[1:n].tolist():  # label 0 is the background
        if area >= min_area:
            boxes.append((cls, float(x), float(y), float(x + w), float(y + h)))
        else:
            small += 1
    return boxes, small


def region_boxes(regions: np.ndarray, cls_of: Mapping[int, int], min_area: int) -> tuple[list[Box], Counter]:
    """One box per region id in ``cls_of`` (id -> det class) present in ``regions`` (non-negative integer ids,
    e.g. a 16-bit instance PNG) with >= ``min_area`` pixels, and per det class the number of smaller regions."""
    from scipy import ndimage

    small: Counter = Counter()
    if not regions.size:
        return [], small
    counts = np.bincount(regions.ravel())
    present = [i for i in sorted(cls_of) if 0 <= i < counts.size and counts[i]]
    if not present:
        return [], small
    lut = np.zeros(counts.size, np.int32)  # wanted ids -> 1..K, everything else 0, for find_objects
    lut[present] = np.arange(1, len(present) + 1)
    boxes = []
    for rid, sl in zip(present, ndimage.find_objects(lut[regions], max_label=len(present))):
        cls = cls_of[rid]
        if counts[rid] < min_area:
            small[cls] += 1
            continue
        ys, xs = sl
        boxes.append((cls, float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)))
    return boxes, small


def clip_box(cls: int, x1: float, y1: float, x2: float, y2: float, wh: tuple[int, int]) -> Box:
    """The box clipped to the ``wh`` image (it may become empty: ``x2 <= x1`` or ``y2 <= y1``)."""
    w, h = wh
    return (cls, min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


def check_plan(plan: Plan, src: Path) -> None:
    """``DatasetError`` when ``plan`` has nothing to convert, a split none of whose images has its annotations
    (a naming mismatch, not a few unlabeled images), or two images of one split with the same stem."""
    if not plan.splits:
        raise DatasetError(f"{src}: no {plan.source} images found under {plan.root}")
    for split, items in plan.splits.items():
        if not items:
            raise DatasetError(
                f"{plan.missing[split][0]}: annotation file not found, and no {split} image has its annotations"
            )
        seen: dict[str, Path] = {}
        for it in items:
            if it.stem in seen:
                raise DatasetError(f"{it.image}: same stem '{it.stem}' as {seen[it.stem]} in split {split}")
            seen[it.stem] = it.image
