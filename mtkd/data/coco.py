"""The ``coco`` layout (DESIGN.md §4): an image folder and an instances JSON per split.

Split paths come from the descriptor (``mtkd.data.descriptor``): ``{images, annotations, masks?}``.

Class mapping, by category *name*:
- a category named like a ``det_names`` entry gives a box of that det class;
- its pixels get the seg class of the same name in ``seg_names``; a det category with no seg class of that name
  leaves its pixels at seg class 0 (``seg_names[0]``, conventionally background);
- a category only in ``seg_names`` (a "stuff" class such as road) gives mask pixels and no box;
- a category in neither list is a problem (nothing is dropped silently).

The semantic mask is rasterised with pycocotools from polygons or RLE (compressed or not), painting the
largest annotation first so smaller objects stay visible; unannotated pixels are seg class 0. ``iscrowd=1``
annotations give no box and mark their pixels ``ignore_index``. When the split has a ``masks`` folder, the
mask is read from ``masks/<image stem>.png`` instead and segmentations are not needed.

``CocoSource`` parses the JSON on construction and validates every sample once, caching the result next to the
JSON (``<name>.json`` -> ``<name>.mtkd.npz``, ``mtkd.data.index``); a valid sample then decodes its image (and
its PNG mask, or rasterises its mask) and takes its boxes from the index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtkd.data.descriptor import CocoSplit, DataSpec
from mtkd.data.index import SUFFIX, index_split, read_indexed
from mtkd.data.samples import (
    Problem,
    RawSample,
    box_problem,
    clip_boxes,
    mask_problems,
    raise_first,
    read_image,
    read_mask,
)


@dataclass
class CocoImage:
    """One image entry and its valid annotations (``dict``s straight from the JSON)."""

    id: int
    file_name: str
    width: int
    height: int
    anns: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Category:
    name: str
    det: int | None  # det class id
    seg: int | None  # seg class id


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true/false are not ids or sizes


def _shown(v: Any) -> str:
    """A JSON value as written in the file, cut to one short line."""
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_problem(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """Why the first of ``obj[keys]`` that is not an integer is wrong (``None`` when all are integers)."""
    bad = next((k for k in keys if not _is_int(obj[k])), None)
    return None if bad is None else f"'{bad}' must be an integer, got {_shown(obj[bad])}"


def _rle_runs(counts: Any) -> list[int] | None:
    """Run lengths of RLE ``counts``: a list of non-negative integers, or a COCO compressed string decoded as
    pycocotools' ``rleFrString`` does (6-bit characters '0'..'o', deltas from the run two back).
    ``None`` when malformed, so garbage never reaches pycocotools' C decoder, which does not check it."""
    if isinstance(counts, list):
        return counts if all(_is_int(c) and c >= 0 for c in counts) else None
    if not isinstance(counts, str):
        return None
    runs: list[int] = []
    x = k = 0
    for ch in counts:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:  # more characters of this number follow
            continue
        if c & 0x10:  # negative: sign-extend
            x -= 1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
        x = k = 0
    return runs if k == 0 else None


def _segmentation_problem(seg: Any, h: int, w: int) -> str | None:
    if isinstance(seg, list):
        if not seg or not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_num, p)) for p in seg
        ):
            return "segmentation polygons must be lists of >= 3 x,y pairs"
        return None
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            return "segmentation RLE needs keys 'size' and 'counts'"
        size = seg["size"]
        if not (isinstance(size, list) and all(map(_is_int, size)) and size == [h, w]):
            return (
                f"segmentation RLE 'size' must be the image's [height, width] [{h}, {w}], got {_shown(size)}"
            )
        runs = _rle_runs(seg["counts"])
        if runs is None:
            return (
                "segmentation RLE 'counts' must be a COCO compressed RLE string or a list of non-negative "
                f"integer run lengths, got {_shown(seg['counts'])}"
            )
        if sum(runs) != h * w:
            return f"segmentation RLE 'counts' cover {sum(runs)} pixels, expected height*width = {h * w}"
        return None
    return f"segmentation must be polygons (list) or RLE (dict), got {type(seg).__name__}"


def parse_instances(spec: DataSpec, split: str) -> tuple[list[CocoImage], list[Problem]]:
    """Parse and check a split's instances JSON; returns its images (JSON order) with their valid annotations."""
    paths: CocoSplit = spec.coco[spec.require_split(split)]
    jp = paths.annotations
    try:
        data = json.loads(jp.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [], [Problem(jp, f"JSON does not parse ({e.msg}, column {e.colno})", e.lineno)]
    except (OSError, UnicodeDecodeError) as e:
        return [], [Problem(jp, f"unreadable ({e})")]
    if not isinstance(data, dict):
        return [], [Problem(jp, "expected a JSON object with 'images', 'annotations', 'categories'")]
    problems = [
        Problem(jp, f"missing key '{k}' (a list)")
        for k in ("images", "annotations", "categories")
        if not isinstance(data.get(k), list)
    ]
    if problems:
        return [], problems

    cats: dict[int, _Category] = {}
    rejected_cats: set[int] = set()  # reported already: their annotations are skipped without a second report
    for i, c in enumerate(data["categories"]):
        where = f"categories[{i}]"
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            problems.append(Problem(jp, f"{where}: missing keys, need 'id' (int) and 'name' (str)"))
            continue
        if why := _int_problem(c, ("id",)):
            problems.append(Problem(jp, f"{where}: {why}"))
            continue
        name = c["name"]
        det = spec.det_names.index(name) if name in spec.det_names else None
        seg = spec.seg_names.index(name) if name in spec.seg_names else None
        if c["id"] in cats:
            problems.append(Problem(jp, f"{where}: duplicate category id {c['id']}"))
        elif det is None and seg is None:
            problems.append(
                Problem(
                    jp, f"{where}: category '{name}' (id {c['id']}) is in neither det_names nor seg_names"
                )
            )
            rejected_cats.add(c["id"])
        else:
            cats[c["id"]] = _Category(name, det, seg)

    images: dict[int, CocoImage] = {}
    rejected_images: set[int] = set()
    stems: dict[str, str] = {}
    for i, im in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width", "height")):
            problems.append(Problem(jp, f"{where}: missing keys, need 'id', 'file_name', 'width', 'height'"))
            continue
        why = _int_problem(im, ("id", "width", "height"))
        if why is None and not (isinstance(im["file_name"], str) and im["width"] > 0 and im["height"] > 0):
            why = "expected str 'file_name' and positive 'width'/'height'"
        if why:
            problems.append(Problem(jp, f"{where}: {why}"))
            continue
        stem = Path(im["file_name"]).stem
        if im["id"] in images:
            problems.append(Problem(jp, f"{where}: duplicate image id {im['id']}"))
        elif stem in stems:
            problems.append(
                Problem(jp, f"{where}: duplicate stem '{stem}' ({im['file_name']} and {stems[stem]})")
            )
            rejected_images.add(im["id"])
        else:
            stems[stem] = im["file_name"]
            images[im["id"]] = CocoImage(im["id"], im["file_name"], im["width"], im["height"])

    for i, a in enumerate(data["annotations"]):
        named = isinstance(a, dict) and "id" in a
        where = f"annotations[{i}]" + (f" (id {_shown(a['id'])})" if named else "")
        missing = [k for k in ("image_id", "category_id") if not isinstance(a, dict) or k not in a]
        if missing:
            problems.append(Problem(jp, f"{where}: missing keys {missing}"))
            continue
        why = _int_problem(a, ("image_id", "category_id", *(("id",) if "id" in a else ())))
        iscrowd = a.get("iscrowd", 0)
        if why is None and not (_is_int(iscrowd) and iscrowd in (0, 1)):
            why = f"'iscrowd' must be 0 or 1, got {_shown(iscrowd)}"
        if why:
            problems.append(Problem(jp, f"{where}: {why}"))
            continue
        image_id, category_id = a["image_id"], a["category_id"]
        if image_id in rejected_images or category_id in rejected_cats:
            continue
        if image_id not in images:
            problems.append(Problem(jp, f"{where}: unknown image_id {a['image_id']}"))
            continue
        if category_id not in cats:
            problems.append(Problem(jp, f"{where}: unknown category_id {a['category_id']}"))
            continue
        im, cat, crowd = images[image_id], cats[category_id], iscrowd == 1
        why = None
        if cat.det is not None and not crowd:
            bbox = a.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_num, bbox))):
                why = "missing or malformed 'bbox' (expected [x, y, w, h])"
            else:
                x, y, w, h = bbox
                why = box_problem((x, y, x + w, y + h), im.width, im.height)
        if why is None and paths.masks is None and (cat.seg is not None or crowd):
            why = (
                "missing 'segmentation' (needed to rasterise the mask; or give the split a masks folder)"
                if "segmentation" not in a
                else _segmentation_problem(a["segmentation"], im.height, im.width)
            )
        if why:
            problems.append(Problem(jp, f"{where}: {why}"))
        else:
            im.anns.append({**a, "_det": cat.det, "_seg": cat.seg, "_crowd": crowd})
    return list(images.values()), problems


def _decode(seg: Any, h: int, w: int) -> np.ndarray:
    """Binary ``[h, w]`` uint8 mask of a polygon list or RLE (compressed or not)."""
    import warnings

    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        counts = seg["counts"]
        rle = {"size": seg["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" DeprecationWarning, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def rasterise(img: CocoImage, ignore_index: int) -> np.ndarray:
    """Semantic mask uint8 ``[H, W]``: seg class 0, then annotations painted largest first (crowd = ignore)."""
    mask = np.zeros((img.height, img.width), np.uint8)
    painted = [
        (a, _decode(a["segmentation"], img.height, img.width))
        for a in img.anns
        if a["_seg"] is not None or a["_crowd"]
    ]
    painted.sort(key=lambda am: -int(am[1].sum()))  # stable: ties keep JSON order
    for a, m in painted:
        mask[m.astype(bool)] = ignore_index if a["_crowd"] else a["_seg"]
    return mask


def load_sample(
    img: CocoImage, spec: DataSpec, paths: CocoSplit, json_path: Path
) -> tuple[RawSample | None, list[Problem]]:
    """Read and check one image with its mask and boxes (``None`` when the image or mask cannot be read)."""
    image_path = paths.images / img.file_name
    image, problems = read_image(image_path)
    if image is not None and image.shape[:2] != (img.height, img.width):
        problems.append(
            Problem(
                image_path,
                f"image is {image.shape[1]}x{image.shape[0]} but {json_path.name} "
                f"says {img.width}x{img.height}",
            )
        )
        return None, problems
    if paths.masks is not None:
        mask_path = paths.masks / f"{Path(img.file_name).stem}.png"
        mask, read = read_mask(mask_path)
        problems += read
        if mask is not None:
            problems += mask_problems(
                mask, mask_path, (img.height, img.width), spec.nc_seg, spec.ignore_index
            )
    else:
        mask = rasterise(img, spec.ignore_index)
    if image is None or mask is None:
        return None, problems
    dets = [a for a in img.anns if a["_det"] is not None and not a["_crowd"]]
    xywh = np.asarray([a["bbox"] for a in dets], np.float32).reshape(-1, 4)
    boxes = clip_boxes(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), img.width, img.height)
    labels = np.asarray([a["_det"] for a in dets], np.int64)
    return RawSample(image, {"seg": mask}, boxes, labels, image_path), problems


class CocoSource:
    """Random access to the raw samples of one COCO split; a bad JSON or file raises ``SampleError``."""

    def __init__(self, spec: DataSpec, split: str) -> None:
        self.spec = spec
        self.split = spec.require_split(split)
        self.paths_ = spec.coco[split]
        self.images, problems = parse_instances(spec, split)
        if not problems and not self.images:
            problems = [Problem(self.paths_.annotations, "split has no images")]
        raise_first(problems)
        p = self.paths_
        self.index = index_split(
            p.annotations.with_name(p.annotations.stem + SUFFIX),
            spec,
            [im.file_name for im in self.images],
            [(p.images / im.file_name, _optional(self._mask_path(im)), ()) for im in self.images],
            self._validate,
            shared=(p.annotations,),
            what=f"split '{split}' of {spec.yaml_path}",
        )

    def _mask_path(self, img: CocoImage) -> Path | None:
        masks = self.paths_.masks
        return None if masks is None else masks / f"{Path(img.file_name).stem}.png"

    def _validate(self, index: int) -> tuple[RawSample | None, list[Problem]]:
        return load_sample(self.images[index], self.spec, self.paths_, self.paths_.annotations)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> RawSample:
        index = range(len(self.images))[index]
        img = self.images[index]
        sample = read_indexed(
            self.index,
            index,
            self.paths_.images / img.file_name,
            None if (m := self._mask_path(img)) is None else {"seg": m},
            lambda: rasterise(img, self.spec.ignore_index),
        )
        if sample is None:
            sample, problems = self._validate(index)
            raise_first(problems)
            assert sample is not None
        return sample

    @property
    def paths(self) -> list[Path]:
        return [self.paths_.images / im.file_name for im in self.images]


def _optional(path: Path | None) -> tuple[Path, ...]:
    return () if path is None else (path,)
