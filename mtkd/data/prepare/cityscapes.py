"""Cityscapes (fine annotations) -> ``yolo_mask``.

Source layout (SRC holds both folders, as unpacked from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip)::

    leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    gtFine/<split>/<city>/<stem>_gtFine_labelIds.png       8-bit label ids 0-33
    gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png    16-bit: labelId * 1000 + k for instances of classes
                                                           with instances, the plain labelId elsewhere

Output:
- Seg: the 19 official train ids (``labelId -> trainId`` of cityscapesScripts' ``labels.py``): road, sidewalk,
  building, wall, fence, pole, traffic_light, traffic_sign, vegetation, terrain, sky, person, rider, car, truck,
  bus, train, motorcycle, bicycle; every other label id (unlabeled, ego vehicle, rectification border, out of roi,
  static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer) ->
  ``ignore_index`` 255. A label id above 33 is a ``DatasetError`` naming the file.
- Det: the 8 'thing' classes person, rider, car, truck, bus, train, motorcycle, bicycle (det ids 0-7, label ids
  24, 25, 26, 27, 28, 31, 32, 33). One box per instance id >= 1000 of those classes, around all of its pixels
  (an instance split by an occluder stays one box); instances of fewer than ``min_area`` pixels (default 16) get
  no box. Skipped: group/crowd regions (a thing label id < 1000 in instanceIds, e.g. "car group"), caravan and
  trailer instances (no train id), and every stuff class.
- Splits: train, val, test. Cityscapes withholds the test labels (its gtFine test PNGs are placeholders), so a
  converted test split has masks that are all ``ignore_index`` and no boxes; the summary says so. An image
  whose labelIds or instanceIds PNG is missing is skipped and counted in the summary.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mtkd.data.prepare.common import (
    DEFAULT_MIN_AREA,
    Converted,
    Item,
    Plan,
    check_ids,
    image_size,
    list_images,
    lookup,
    pair,
    present_values,
    read_ids,
    region_boxes,
    require_dir,
)
from mtkd.errors import DatasetError

SEG_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
#: official labelId -> trainId (cityscapesScripts labels.py); label ids not listed -> 255
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
MAX_LABEL_ID = 33
#: labelId -> det class id, for the 8 thing classes with a train id
THING_TO_DET = {24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}
DET_NAMES = tuple(SEG_NAMES[LABEL_TO_TRAIN[k]] for k in sorted(THING_TO_DET))
SPLITS = ("train", "val", "test")
_LUT = lookup(LABEL_TO_TRAIN, MAX_LABEL_ID + 1)


def locate(src: Path) -> Path:
    """``src`` when it holds ``leftImg8bit/`` and ``gtFine/``."""
    missing = [n for n in ("leftImg8bit", "gtFine") if not (src / n).is_dir()]
    if missing:
        raise DatasetError(
            f"{src}: not a Cityscapes folder; expected folders {src / 'leftImg8bit'} and {src / 'gtFine'} "
            f"(missing: {', '.join(missing)})"
        )
    return src


def convert(item: Item, min_area: int) -> Converted:
    """Train-id mask and instance boxes of one image."""
    label_path, inst_path = item.annotations
    wh = image_size(item.image)
    labels = read_ids(label_path, "labelIds PNG", image=item.image, wh=wh)
    check_ids(labels, range(MAX_LABEL_ID + 1), label_path, "labelIds PNG", f"label ids 0-{MAX_LABEL_ID}")
    inst = read_ids(inst_path, "instanceIds PNG", image=item.image, wh=wh)
    ids = present_values(inst)
    classes = np.where(ids >= 1000, ids // 1000, ids)
    check_ids(
        classes, range(MAX_LABEL_ID + 1), inst_path, "instanceIds PNG", "labelId * 1000 + k, labelId 0-33"
    )
    cls_of = {
        int(i): THING_TO_DET[int(i) // 1000] for i in ids if i >= 1000 and int(i) // 1000 in THING_TO_DET
    }
    boxes, small = region_boxes(inst, cls_of, min_area)
    conv = Converted(_LUT[labels], boxes)
    for det, n in small.items():
        conv.skipped[f"{DET_NAMES[det]} under min area"] += n
    return conv


def _annotations(gt: Path, city: str, stem: str) -> tuple[Path, Path]:
    return gt / city / f"{stem}_gtFine_labelIds.png", gt / city / f"{stem}_gtFine_instanceIds.png"


def plan(src: Path, *, splits: tuple[str, ...] | None = None, min_area: int = DEFAULT_MIN_AREA) -> Plan:
    """Find every split of a Cityscapes copy (``splits``: only these, each required)."""
    root = locate(src)
    items, missing, notes = {}, {}, []
    for split in splits or SPLITS:
        images, gt = root / "leftImg8bit" / split, root / "gtFine" / split
        if splits is None and not (images.is_dir() and gt.is_dir()):
            if images.is_dir() or gt.is_dir():
                notes.append(f"split {split} skipped: {gt if images.is_dir() else images} not found")
            continue
        require_dir(images, f"the {split} images as {images}/<city>/<stem>_leftImg8bit.png")
        require_dir(gt, f"the {split} annotations as {gt}/<city>/<stem>_gtFine_labelIds.png")
        found: list[Item] = []
        absent: list[Path] = []
        for city in sorted(p.name for p in images.iterdir() if p.is_dir()):
            f, a = pair(
                list_images(images / city, "_leftImg8bit"),
                lambda stem, image, c=city, g=gt: _annotations(g, c, stem),
            )
            found += f
            absent += a
        if found or absent:
            items[split], missing[split] = found, absent
    return Plan(
        source="cityscapes",
        root=root,
        det_names=DET_NAMES,
        seg_names=SEG_NAMES,
        description=(
            "Cityscapes gtFine via mtkd prepare_dataset: 19 train ids, others -> 255; one box per instance of "
            f"the 8 thing classes with >= {min_area} px"
        ),
        splits=items,
        missing=missing,
        convert=functools.partial(convert, min_area=min_area),
        notes=tuple(notes),
    )
