"""``tools/check_dataset.py DATA_YAML``: check every sample of every split, print every problem and a summary.

Exit codes: 0 clean, 1 problems found (one line each: ``file[:line]: what is wrong``), 2 the descriptor itself
is unusable. The checks are the ones the training-time readers apply (``mtkd.data.yolo_mask``,
``mtkd.data.coco``), so a dataset that passes here loads without errors. It reads and checks every file itself
and never uses the readers' index cache (``mtkd.data.index``), so a stale cache cannot hide a problem.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtkd.data import coco, yolo_mask
from mtkd.data.descriptor import DataSpec, load_data_yaml
from mtkd.data.samples import Problem, RawSample
from mtkd.errors import DatasetError


@dataclass
class SplitStats:
    """Counts of one split: images, images without boxes, boxes per det class, pixels per mask value (0..255) of
    each seg task."""

    nc_det: int
    images: int = 0
    empty: int = 0
    boxes: np.ndarray = field(init=False)
    pixels: dict[str, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.zeros(self.nc_det, np.int64)

    def add(self, sample: RawSample) -> None:
        self.images += 1
        self.empty += int(len(sample.labels) == 0)
        self.boxes += np.bincount(sample.labels, minlength=self.nc_det)
        for task, mask in sample.masks.items():
            counts = np.bincount(mask.ravel(), minlength=256)
            self.pixels[task] = self.pixels[task] + counts if task in self.pixels else counts


@dataclass
class CheckReport:
    """Result of ``check_dataset``: every problem found, and per-split statistics of the readable samples."""

    spec: DataSpec
    problems: list[Problem] = field(default_factory=list)
    stats: dict[str, SplitStats] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """Small tables: images and boxes per class; pixel share (%) per seg class (+ ignore), one per seg task."""
        det = self.spec.det_names
        rows = [["split", "images", "no boxes", "boxes", *det]]
        for s, st in self.stats.items():
            rows.append([s, st.images, st.empty, int(st.boxes.sum()), *map(int, st.boxes)])
        lines = _table(rows)
        for task in self.spec.seg_tasks.values():
            title = "pixel share per seg class (%)" + (
                f" of task '{task.name}'" if self.spec.multi_seg else ""
            )
            lines += ["", f"{title}:"]
            rows = [["split", *task.names, f"ignore({self.spec.ignore_index})"]]
            for s, st in self.stats.items():
                px = st.pixels.get(task.name, np.zeros(256, np.int64))
                total = max(int(px.sum()), 1)
                share = [*px[: task.nc], px[self.spec.ignore_index]]
                rows.append([s, *(f"{100 * v / total:.2f}" for v in share)])
            lines += _table(rows)
        return "\n".join(lines)


def _table(rows: list[list]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in rows
    ]


def check_dataset(yaml_path: str | Path) -> CheckReport:
    """Check every sample of every split. Raises ``DatasetError`` only when the descriptor is unusable."""
    spec = load_data_yaml(yaml_path)
    report = CheckReport(spec)
    for split in spec.splits:
        st = report.stats.setdefault(split, SplitStats(spec.nc_det))
        if spec.format == "coco":
            paths = spec.coco[split]
            images, problems = coco.parse_instances(spec, split)
            report.problems += problems
            loaded = (coco.load_sample(im, spec, paths, paths.annotations) for im in images)
        else:
            items, problems = yolo_mask.list_split(spec, split)
            report.problems += problems
            loaded = (yolo_mask.load_sample(it, spec) for it in items)
        for sample, problems in loaded:
            report.problems += problems
            if sample is not None:
                st.add(sample)
    return report


def main(argv: list[str] | None = None) -> int:
    """``mtkd check_dataset`` / ``tools/check_dataset.py``."""
    parser = argparse.ArgumentParser(
        prog="check_dataset",
        description="Check every sample of every split of a dataset descriptor.",
        epilog="exit codes: 0 clean, 1 problems found, 2 unusable descriptor",
    )
    parser.add_argument("data_yaml", metavar="DATA_YAML", help="dataset descriptor (datasets/*.yaml)")
    args = parser.parse_args(argv)
    try:
        report = check_dataset(args.data_yaml)
    except DatasetError as e:
        print(f"check_dataset: error: {e}", file=sys.stderr)
        return 2
    for p in report.problems:
        print(p)
    if report.problems:
        print()
    print(report.summary())
    n = len(report.problems)
    print(f"\n{args.data_yaml}: " + (f"{n} problem(s) found" if n else "OK, no problems found"))
    return 1 if n else 0
