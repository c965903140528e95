"""BDD100K in the YOLOP layout -> ``yolo_mask`` (detection + drivable area, and with ``lane`` the lane lines).

Source layout (SRC is the YOLOP dataset root)::

    images/<split>/<stem>.jpg
    det_annotations/<split>/<stem>.json       BDD per-image JSON: frames[0].objects[] with category and
                                              box2d {x1, y1, x2, y2} (pixels)
    da_seg_annotations/<split>/<stem>.png     drivable-area mask (the seg task)
    ll_seg_annotations/<split>/<stem>.png     lane-line mask (only with ``lane``: the second seg task)

Detection classes (``classes``):
- ``vehicle`` (default, YOLOP's single class): car, bus, truck and train -> ``vehicle`` (det id 0).
- ``bdd10``: the 10 BDD100K detection classes pedestrian, rider, car, truck, bus, train, motorcycle, bicycle,
  traffic_light, traffic_sign (det ids 0-9); the 2018 names person, bike and motor are read as pedestrian,
  bicycle and motorcycle.
Boxes are ``box2d`` clipped to the image. No box for: ``area/*`` and ``lane/*`` objects (polygons, ignored),
objects of other categories (e.g. traffic light in ``vehicle`` mode, other person, trailer), objects without
``box2d``, and boxes under ``min_area`` pixels of area (default 16) or empty after clipping; the summary counts
them. A JSON without ``frames[0].objects``, an object without a string ``category`` or a ``box2d`` without
numeric x1/y1/x2/y2 is a ``DatasetError`` naming the file.

Drivable area (``da_encoding``; seg classes ``background`` 0, ``drivable`` 1, no ignored pixels):
- ``binary``: YOLOP's release, 0 = background, 255 = drivable.
- ``bdd2018``: BDD100K 2018 drivable maps, 0 = background, 1 = direct, 2 = alternative (both drivable).
- ``bdd2020``: BDD100K 2020 masks, 0 = direct, 1 = alternative (both drivable), 2 = background.
- ``auto`` (default): per file, ``binary`` when its values lie in {0, 255}, else ``bdd2018`` when they lie in
  {0, 1, 2} (the two variants YOLOP's da_seg_annotations come in; both read 0 as background). The 2020
  encoding must be asked for: an all-zero mask would mean "all drivable" there.
Any other value is a ``DatasetError`` naming the file. An image without its JSON or mask is skipped and counted.

Lane lines (``lane=True``, ``--lane``): the output has two seg tasks (``seg_tasks``), ``drivable``
(``background``, ``drivable``) and ``lane`` (``background``, ``lane``; a line task, evaluated with the lane
metrics), masks under ``masks/drivable/<split>/`` and ``masks/lane/<split>/``. YOLOP's ``ll_seg_annotations``
PNGs hold 0 background and 255 lane (0/1 is read the same way); any other value is a ``DatasetError``.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from mtkd.data.prepare.common import (
    DEFAULT_MIN_AREA,
    Box,
    Converted,
    Item,
    Plan,
    check_ids,
    clip_box,
    image_size,
    list_images,
    pair,
    present_values,
    read_ids,
    require_dir,
)
from mtkd.errors import ConfigError, DatasetError

SEG_NAMES = ("background", "drivable")
LANE_NAMES = ("background", "lane")
BDD10 = (
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic_light", "traffic_sign",
)  # fmt: skip
#: ``classes`` -> (det_names, BDD category -> det class id)
CLASS_MAPS: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "vehicle": (("vehicle",), {"car": 0, "bus": 0, "truck": 0, "train": 0}),
    "bdd10": (
        BDD10,
        {
            **{n.replace("_", " "): i for i, n in enumerate(BDD10)},
            "person": 0,
            "motor": 6,
            "bike": 7,
        },
    ),
}
#: ``da_encoding`` -> (allowed values, drivable values)
DA_ENCODINGS = {
    "binary": ({0, 255}, {255}),
    "bdd2018": ({0, 1, 2}, {1, 2}),
    "bdd2020": ({0, 1, 2}, {0, 1}),
}
SPLITS = ("train", "val", "test")
FOLDERS = ("images", "det_annotations", "da_seg_annotations")


def locate(src: Path) -> Path:
    """``src`` when it holds ``images/``, ``det_annotations/`` and ``da_seg_annotations/``."""
    missing = [n for n in FOLDERS if not (src / n).is_dir()]
    if missing:
        raise DatasetError(
            f"{src}: not BDD100K in the YOLOP layout; expected folders "
            f"{', '.join(str(src / n) for n in FOLDERS)} (missing: {', '.join(missing)})"
        )
    return src


def _objects(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    objects = (
        frames[0].get("objects")
        if isinstance(frames, list) and frames and isinstance(frames[0], dict)
        else None
    )
    if not isinstance(objects, list):
        what = (
            "no 'frames' list"
            if not isinstance(frames, list) or not frames
            else "no 'objects' list in frames[0]"
        )
        raise DatasetError(f"{path}: expected a BDD per-image label JSON with frames[0].objects ({what})")
    return objects


def boxes_from_json(
    path: Path, cats: dict[str, int], wh: tuple[int, int], min_area: int
) -> tuple[list[Box], Counter]:
    """Boxes of the mapped categories in one JSON, and the unboxed objects by reason."""
    boxes: list[Box] = []
    skipped: Counter = Counter()
    for i, obj in enumerate(_objects(path)):
        cat = obj.get("category") if isinstance(obj, dict) else None
        if not isinstance(cat, str):
            raise DatasetError(f"{path}: frames[0].objects[{i}] has no string 'category'")
        if cat.startswith(("area/", "lane/")):
            continue
        if cat not in cats:
            skipped[f"{cat} (not a det class)"] += 1
            continue
        b = obj.get("box2d")
        if b is None:
            skipped[f"{cat} without box2d"] += 1
            continue
        xyxy = [b.get(k) for k in ("x1", "y1", "x2", "y2")] if isinstance(b, dict) else [None]
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in xyxy
        ):
            raise DatasetError(
                f"{path}: frames[0].objects[{i}] ({cat}): box2d needs numeric x1, y1, x2, y2, got {b!r}"
            )
        box = clip_box(cats[cat], *(float(v) for v in xyxy), wh)
        area = max(box[3] - box[1], 0.0) * max(box[4] - box[2], 0.0)
        if area <= 0:
            skipped[f"{cat} empty after clipping"] += 1
        elif area < min_area:
            skipped[f"{cat} under min area"] += 1
        else:
            boxes.append(box)
    return boxes, skipped


def drivable(ids: np.ndarray, path: Path, encoding: str) -> np.ndarray:
    """uint8 mask: 1 where drivable, 0 background, under ``encoding`` (``auto`` picks per file)."""
    expected = {
        "auto": "0/255 (YOLOP binary) or 0/1/2 (BDD100K drivable ids)",
        "binary": "0 background / 255 drivable",
        "bdd2018": "0 background / 1 direct / 2 alternative",
        "bdd2020": "0 direct / 1 alternative / 2 background",
    }[encoding]
    if encoding == "auto":
        encoding = "binary" if set(present_values(ids).tolist()) <= {0, 255} else "bdd2018"
    allowed, drive = DA_ENCODINGS[encoding]
    check_ids(ids, allowed, path, "drivable-area mask", expected)
    return np.isin(ids, sorted(drive)).astype(np.uint8)


def lane_lines(ids: np.ndarray, path: Path) -> np.ndarray:
    """uint8 mask: 1 on lane lines, 0 background (values 0/255, or 0/1)."""
    values = set(present_values(ids).tolist())
    allowed = {0, 1} if values <= {0, 1} else {0, 255}
    check_ids(ids, allowed, path, "lane-line mask", "0 background / 255 lane (or 0/1)")
    return (ids > 0).astype(np.uint8)


def convert(item: Item, classes: str, da_encoding: str, min_area: int) -> Converted:
    """Drivable mask (and lane mask, when the item has one) and JSON boxes of one image."""
    json_path, mask_path, *lane = item.annotations
    wh = image_size(item.image)
    boxes, skipped = boxes_from_json(json_path, CLASS_MAPS[classes][1], wh, min_area)
    ids = read_ids(mask_path, "drivable-area mask", image=item.image, wh=wh)
    da = drivable(ids, mask_path, da_encoding)
    if not lane:
        return Converted(da, boxes, skipped)
    ll = lane_lines(read_ids(lane[0], "lane-line mask", image=item.image, wh=wh), lane[0])
    return Converted({"drivable": da, "lane": ll}, boxes, skipped)


def plan(
    src: Path,
    *,
    splits: tuple[str, ...] | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    classes: str = "vehicle",
    da_encoding: str = "auto",
    lane: bool = False,
) -> Plan:
    """Find every split of a YOLOP-layout BDD100K copy (``splits``: only these, each required); ``lane``: also the
    lane-line masks, as a second seg task."""
    if classes not in CLASS_MAPS or (da_encoding != "auto" and da_encoding not in DA_ENCODINGS):
        raise ConfigError(f"bdd100k: unknown classes {classes!r} or da_encoding {da_encoding!r}")
    root = locate(src)
    items, missing, notes = {}, {}, []
    for split in splits or SPLITS:
        images, det, da = (root / n / split for n in FOLDERS)
        if splits is None and not (images.is_dir() and (det.is_dir() or da.is_dir())):
            if images.is_dir():  # e.g. the unlabeled BDD test images
                notes.append(f"split {split} skipped: neither {det} nor {da} exists")
            continue
        require_dir(images, f"the {split} images as {images}/<stem>.jpg")
        require_dir(det, f"the {split} detection labels as {det}/<stem>.json")
        require_dir(da, f"the {split} drivable-area masks as {da}/<stem>.png")
        ll = root / "ll_seg_annotations" / split
        if lane:
            require_dir(ll, f"the {split} lane-line masks as {ll}/<stem>.png (--lane)")

        def files(stem: str, image: Path, d: Path = det, a: Path = da, ll: Path = ll) -> tuple[Path, ...]:
            return (d / f"{stem}.json", a / f"{stem}.png", *((ll / f"{stem}.png",) if lane else ()))

        found, absent = pair(list_images(images), files)
        if found or absent:
            items[split], missing[split] = found, absent
    names = CLASS_MAPS[classes][0]
    return Plan(
        source="bdd100k",
        root=root,
        det_names=names,
        seg_names=SEG_NAMES,
        description=(
            f"BDD100K (YOLOP layout) via mtkd prepare_dataset: det classes '{classes}' ({', '.join(names)}), "
            f"boxes >= {min_area} px^2; seg = drivable area (da_encoding {da_encoding})"
            + (" + lane lines (ll_seg_annotations)" if lane else "")
        ),
        seg_tasks={"drivable": SEG_NAMES, "lane": LANE_NAMES} if lane else None,
        splits=items,
        missing=missing,
        convert=functools.partial(convert, classes=classes, da_encoding=da_encoding, min_area=min_area),
        notes=tuple(notes),
    )
