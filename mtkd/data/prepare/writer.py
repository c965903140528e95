"""Write a ``Plan`` as a ``yolo_mask`` dataset: ``OUT/{images,labels,masks}/<split>/`` and ``OUT/data.yaml``.

- Images are copied byte for byte (same format, same suffix): ``images/<split>/<stem><suffix>``.
- Masks are 8-bit PNGs (mode L) of seg class ids, ``ignore_index`` (255) where unlabeled: ``masks/<split>/<stem>.png``
  (a plan with ``seg_tasks``: ``masks/<task>/<split>/<stem>.png``, one per task).
- Label files hold one ``class cx cy w h`` line per box, normalized by the image size, 6 decimals, sorted by
  ``(class, x1, y1, x2, y2)``; an image without boxes gets an empty label file.
- Every file goes through ``mtkd.utils.atomic``; ``data.yaml`` is written last, so a folder without it is an
  unfinished conversion. Items are written in sorted order (also with ``workers``), so the same source gives
  byte-identical output.

The output folder: a missing or empty folder, or one holding none of ``data.yaml``, ``images/``, ``labels/`` and
``masks/``, is written into and nothing else in it is touched. A folder holding any of those four already holds
a dataset and is refused unless ``overwrite``; then exactly those four are removed first (a symlink is unlinked,
never followed) and nothing else. OUT may not be the source root or a folder containing it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtkd.data.prepare.common import Converted, Item, Plan
from mtkd.errors import ConfigError, OutputError
from mtkd.utils.atomic import atomic_write, describe_os_error, write_bytes, write_text
from mtkd.utils.log import get_logger

MARKER = "# written by mtkd prepare_dataset"
DATASET_ENTRIES = ("data.yaml", "images", "labels", "masks")
log = get_logger(__name__)


@dataclass
class SplitResult:
    """What was written for one split: images, boxes per det class, mask pixels per value (per seg task: ``seg``
    for a one-task plan), skipped objects."""

    nc_det: int
    images: int = 0
    boxes: np.ndarray = field(init=False)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    missing: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boxes = np.zeros(self.nc_det, np.int64)


def prepare_out(out: Path, root: Path, overwrite: bool) -> None:
    """Check (and with ``overwrite`` clear) the output folder; see the module docstring for the rules."""
    try:
        out_r, root_r = out.resolve(), root.resolve()
        if out_r == root_r or out_r in root_r.parents:
            raise ConfigError(
                f"OUT {out}: is the source folder or contains it ({root}); choose a folder of its own"
            )
        if not out.exists():
            return
        if not out.is_dir():
            raise ConfigError(f"OUT {out}: exists and is not a folder")
        held = [n for n in DATASET_ENTRIES if os.path.lexists(out / n)]
        if not held:
            return
        if not overwrite:
            raise ConfigError(
                f"OUT {out}: already holds a dataset ({', '.join(held)}); pass --overwrite to replace it, "
                "or choose another folder"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(out))
        for name in held:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    except OSError as e:
        why = describe_os_error(e)
        raise OutputError(f"{e.filename or out}: cannot prepare the output folder ({why})") from None


def label_lines(boxes: list, wh: tuple[int, int]) -> str:
    """The label file text: ``class cx cy w h`` per box (pixel xyxy -> normalized), sorted."""
    w, h = wh
    return "".join(
        f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
        for c, x1, y1, x2, y2 in sorted(boxes)
    )


def write_item(
    job: tuple[Path, str, Item, object, int],
) -> tuple[np.ndarray, dict[str, np.ndarray], Counter]:
    """Convert and write one item; returns (boxes per det class, mask pixels per value per task, skipped)."""
    from PIL import Image

    out, split, item, convert, nc_det = job
    conv: Converted = convert(item)  # type: ignore[operator]
    data = item.image.read_bytes()
    several = isinstance(conv.mask, dict)
    masks = conv.mask if isinstance(conv.mask, dict) else {"seg": conv.mask}
    write_bytes(out / "images" / split / f"{item.stem}{item.image.suffix}", data, what="image")
    pixels = {}
    for task, m in masks.items():
        mask = np.ascontiguousarray(m, dtype=np.uint8)
        folder = out / "masks" / task / split if several else out / "masks" / split
        with atomic_write(folder / f"{item.stem}.png", "wb", what="mask") as f:
            Image.fromarray(mask).save(f, format="PNG")
        pixels[task] = np.bincount(mask.ravel(), minlength=256).astype(np.int64)
    wh = (mask.shape[1], mask.shape[0])
    write_text(out / "labels" / split / f"{item.stem}.txt", label_lines(conv.boxes, wh), what="label file")
    counts = np.bincount([b[0] for b in conv.boxes], minlength=nc_det).astype(np.int64)
    return counts, pixels, conv.skipped


def _results(jobs: list, workers: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], Counter]]:
    """``write_item`` over ``jobs`` in order: in this process, or in ``workers`` processes (first error wins)."""
    if workers <= 1 or len(jobs) < 2:
        yield from map(write_item, jobs)
        return
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(write_item, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _yaml_names(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(n if re.fullmatch(r"[A-Za-z_][\w-]*", n) else json.dumps(n) for n in names) + "]"


def yaml_text(plan: Plan, splits: list[str]) -> str:
    """``data.yaml`` for the written splits (``path: .``: the dataset is the folder holding the file)."""
    root = str(plan.root).replace("\n", " ")
    if plan.seg_tasks:
        seg = "seg_tasks:\n" + "".join(f"  {t}: {_yaml_names(n)}\n" for t, n in plan.seg_tasks.items())
    else:
        seg = f"seg_names: {_yaml_names(plan.seg_names)}\n"
    return (
        f"{MARKER} from {plan.source} ({root})\n"
        "path: .\nformat: yolo_mask\n"
        + "".join(f"{s}: {s}\n" for s in splits)
        + f"det_names: {_yaml_names(plan.det_names)}\n{seg}"
        f"ignore_index: {plan.ignore_index}\ndescription: {json.dumps(plan.description)}\n"
    )


def write_plan(plan: Plan, out: Path, *, overwrite: bool = False, workers: int = 0) -> dict[str, SplitResult]:
    """Write every split of ``plan`` under ``out``, then ``out/data.yaml``; returns per-split results."""
    prepare_out(out, plan.root, overwrite)
    nc = len(plan.det_names)
    results: dict[str, SplitResult] = {}
    for split, items in plan.splits.items():
        res = results[split] = SplitResult(nc, missing=list(plan.missing.get(split, [])))
        step = max(1000, len(items) // 10)
        for counts, pixels, skipped in _results(
            [(out, split, it, plan.convert, nc) for it in items], workers
        ):
            res.images += 1
            res.boxes += counts
            for task, px in pixels.items():
                res.pixels[task] = res.pixels[task] + px if task in res.pixels else px
            res.skipped.update(skipped)
            if res.images % step == 0 and res.images < len(items):
                log.info(f"prepare_dataset: {split}: {res.images}/{len(items)} images")
    write_text(out / "data.yaml", yaml_text(plan, list(results)), what="dataset descriptor")
    return results


def summary(plan: Plan, results: dict[str, SplitResult]) -> str:
    """A few lines per split: images, boxes per class, skipped images/objects; then the plan's notes."""
    lines = []
    for split, r in results.items():
        per = ", ".join(f"{n} {int(c)}" for n, c in zip(plan.det_names, r.boxes))
        lines.append(f"{split}: {r.images} images, {int(r.boxes.sum())} boxes ({per})")
        if r.missing:
            lines.append(
                f"  {len(r.missing)} image(s) skipped: annotation file missing (first: {r.missing[0]})"
            )
        if r.skipped:
            lines.append("  no box: " + ", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())))
        if r.images and all(px[plan.ignore_index] == px.sum() for px in r.pixels.values()):
            lines.append(
                f"  note: every mask pixel of {split} is ignore_index {plan.ignore_index} (unlabeled split)"
            )
    return "\n".join(lines + [f"note: {n}" for n in plan.notes])
