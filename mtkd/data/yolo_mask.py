"""The ``yolo_mask`` layout (YOLOP/BDD style, DESIGN.md §4): listing, parsing, checking and reading samples.

```
<root>/images/<split>/<stem>.{jpg,png,...}   RGB image (8- or 16-bit; 16-bit is scaled to 8 by >> 8)
<root>/labels/<split>/<stem>.txt             one "class cx cy w h" line per box, normalized to [0, 1];
                                             empty or missing file = no objects (allowed, counted)
<root>/masks/<split>/<stem>.png              class ids (mode L or P, or 16-bit <= 255), ignore_index = unlabeled
<root>/masks/<task>/<split>/<stem>.png       the same, one folder per task of a ``seg_tasks`` dataset
```
Blank label lines are skipped. Boxes may exceed the image by ``BOX_EPS`` of its size (label-tool rounding) and
are clipped; anything else wrong raises ``SampleError`` naming the file and line.

``YoloMaskSource`` validates its split once, when constructed, and caches the result in
``labels/<split folder>.mtkd.npz`` (``mtkd.data.index``); ``list_split``/``load_sample`` read the files every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtkd.data.descriptor import DataSpec
from mtkd.data.index import SUFFIX, index_split, read_indexed
from mtkd.data.samples import (
    IMAGE_SUFFIXES,
    Problem,
    RawSample,
    box_problem,
    clip_boxes,
    mask_problems,
    raise_first,
    read_image,
    read_mask,
)


@dataclass(frozen=True)
class YoloItem:
    """The files of one sample: image, label (may not exist), one mask per seg task (descriptor order)."""

    image: Path
    label: Path
    masks: dict[str, Path]

    @property
    def mask(self) -> Path:
        """The mask of a single-task sample."""
        (path,) = self.masks.values()
        return path


def list_split(spec: DataSpec, split: str) -> tuple[list[YoloItem], list[Problem]]:
    """Samples of a split, sorted by stem, plus listing problems (duplicate stems, orphan labels/masks, empty)."""
    images_dir, labels_dir, _ = spec.yolo_dirs(split)
    mask_dirs = spec.mask_dirs(split)
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, []).append(p)
    problems: list[Problem] = []
    items = []
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            others = ", ".join(q.name for q in paths[1:])
            problems.append(Problem(paths[0], f"duplicate stem '{stem}': also {others}"))
        masks = {t: d / f"{stem}.png" for t, d in mask_dirs.items()}
        items.append(YoloItem(paths[0], labels_dir / f"{stem}.txt", masks))
    if not items:
        problems.append(Problem(images_dir, "split has no images"))
    folders = [(labels_dir, ".txt", "label"), *((d, ".png", "mask") for d in mask_dirs.values())]
    for folder, suffix, what in folders:
        for p in sorted(folder.glob(f"*{suffix}")):
            if p.stem not in by_stem:
                problems.append(Problem(p, f"{what} file has no image in {images_dir}"))
    return items, problems


def parse_label_file(
    path: Path, nc: int, image_wh: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Parse a YOLO label file into pixel boxes.

    Args:
        path: the ``.txt`` file; a missing file means no objects.
        nc: number of det classes.
        image_wh: ``(W, H)`` of the image, or ``None`` when unknown (box ranges are then not checked).

    Returns:
        boxes float32 ``[n, 4]`` xyxy pixels (clipped to the image), labels int64 ``[n]``, problems.
    """
    boxes: list[list[float]] = []
    labels: list[int] = []
    problems: list[Problem] = []
    if not path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), problems
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), [Problem(path, f"unreadable ({e})")]
    w, h = image_wh if image_wh is not None else (1, 1)
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            problems.append(Problem(path, f"expected 5 fields 'class cx cy w h', got {len(fields)}", lineno))
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.append(Problem(path, f"non-numeric field in {line.strip()!r}", lineno))
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(Problem(path, f"non-finite value in {line.strip()!r}", lineno))
            continue
        cls, cx, cy, bw, bh = values
        if cls != int(cls) or not 0 <= cls < nc:
            problems.append(Problem(path, f"class id {fields[0]} is not a det class 0..{nc - 1}", lineno))
            continue
        xyxy = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
        why = (
            box_problem(xyxy, w, h)
            if image_wh is not None
            else ("box has zero or negative area" if bw <= 0 or bh <= 0 else None)
        )
        if why:
            problems.append(Problem(path, why, lineno))
            continue
        boxes.append(list(xyxy))
        labels.append(int(cls))
    arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return clip_boxes(arr, w, h), np.asarray(labels, np.int64), problems


def load_sample(item: YoloItem, spec: DataSpec) -> tuple[RawSample | None, list[Problem]]:
    """Read and check one sample. The sample is ``None`` when its image or a mask cannot be read."""
    image, problems = read_image(item.image)
    hw = image.shape[:2] if image is not None else None
    masks = {}
    for task, path in item.masks.items():
        mask, mask_read = read_mask(path)
        problems += mask_read
        if mask is not None:
            problems += mask_problems(mask, path, hw, spec.seg_tasks[task].nc, spec.ignore_index)
            masks[task] = mask
    wh = (image.shape[1], image.shape[0]) if image is not None else None
    boxes, labels, label_problems = parse_label_file(item.label, spec.nc_det, wh)
    problems += label_problems
    if image is None or len(masks) != len(item.masks):
        return None, problems
    return RawSample(image, masks, boxes, labels, item.image), problems


class YoloMaskSource:
    """Random access to the raw samples of one ``yolo_mask`` split; bad files raise ``SampleError``.

    The split is indexed on construction (``mtkd.data.index``): a sample that passed decodes its image and mask
    and takes its boxes from the index; any other is read and checked by ``load_sample`` as it always was.
    """

    def __init__(self, spec: DataSpec, split: str) -> None:
        self.spec = spec
        self.split = spec.require_split(split)
        self.items, problems = list_split(spec, split)
        raise_first(problems)
        labels_dir = spec.yolo_dirs(split)[1]
        self.index = index_split(
            labels_dir.parent / f"{labels_dir.name}{SUFFIX}",
            spec,
            [it.image.name for it in self.items],
            [(it.image, tuple(it.masks.values()), (it.label,)) for it in self.items],
            self._validate,
            what=f"split '{split}' of {spec.yaml_path}",
        )

    def _validate(self, index: int) -> tuple[RawSample | None, list[Problem]]:
        return load_sample(self.items[index], self.spec)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> RawSample:
        index = range(len(self.items))[index]
        item = self.items[index]
        sample = read_indexed(self.index, index, item.image, item.masks)
        if sample is None:
            sample, problems = load_sample(item, self.spec)
            raise_first(problems)
            assert sample is not None
        return sample

    @property
    def paths(self) -> list[Path]:
        return [it.image for it in self.items]
