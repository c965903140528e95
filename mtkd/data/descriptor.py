"""Dataset descriptor (``datasets/*.yaml``, DESIGN.md §4): load, validate, resolve paths.

```yaml
path: shapes            # dataset root, relative to this YAML's folder or absolute (default: the YAML's folder)
format: yolo_mask       # yolo_mask | coco
train: train            # splits: train / val / test (at least one)
val: val
det_names: [ellipse, rectangle, triangle, star]
seg_names: [background, road, ellipse, rectangle, triangle, star]
ignore_index: 255       # mask value of unlabeled pixels (default 255); must not be a seg class id
```

Several segmentation tasks (YOLOP/BDD100K: drivable area and lane lines, which overlap and so cannot be one
mask): ``seg_tasks`` instead of ``seg_names``, task name -> class list, or -> ``{names: [...], lines: true}`` for a
thin-structure task evaluated also with the lane-line metrics (a task named ``lane``/``lanes``/``lane_line(s)``/
``ll`` is one unless ``lines: false``). One mask per task and sample, at ``masks/<task>/<split>/<stem>.png``
(``yolo_mask`` only); ``ignore_index`` is shared by the tasks (the letterbox pads every mask with it).

```yaml
seg_tasks:
  drivable: [background, drivable]
  lane: [background, lane]
```
A single-task descriptor (``seg_names``) is the task ``seg`` (``SINGLE_TASK``): ``spec.seg_tasks == {"seg": ...}``
and its masks stay at ``masks/<split>/``.

Split values by format:
- ``yolo_mask``: a folder name ``S``; the root holds ``images/S/``, ``labels/S/`` and ``masks/S/``.
- ``coco``: either a mapping ``{images: DIR, annotations: FILE.json, masks: DIR}`` (paths relative to the root;
  ``masks`` optional: PNG masks named like the images, used instead of rasterising the annotations), or a
  string ``S`` meaning ``{images: images/S, annotations: annotations/instances_S.json}``.

Every problem raises ``DatasetError`` naming the YAML file and the field; ``tools/check_dataset.py`` exits 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtkd.errors import DatasetError
from mtkd.utils.suggest import did_you_mean

FORMATS = ("yolo_mask", "coco")
SPLITS = ("train", "val", "test")
KEYS = ("path", "format", *SPLITS, "det_names", "seg_names", "seg_tasks", "ignore_index", "description")
COCO_SPLIT_KEYS = ("images", "annotations", "masks")
SINGLE_TASK = "seg"  # the task name of a single-task (``seg_names``) dataset
SEG_TASK_KEYS = ("names", "lines")
LINE_TASK_NAMES = ("lane", "lanes", "lane_line", "lane_lines", "ll")
#: names a seg task may not take: the detection task, the loss keys' prefixes and ``seg`` in a multi-task set
RESERVED_TASK_NAMES = ("det", "loss", "seg", "feat", "images", "masks")


@dataclass(frozen=True)
class SegTask:
    """One segmentation task of a dataset: its name, class names (mask value = index) and whether it is a
    thin-structure (lane-line) task, evaluated also with YOLOP's line metrics."""

    name: str
    names: list[str]
    lines: bool = False

    @property
    def nc(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class CocoSplit:
    """Resolved paths of one COCO split: image folder, instances JSON, optional PNG mask folder."""

    images: Path
    annotations: Path
    masks: Path | None = None


@dataclass(frozen=True)
class DataSpec:
    """A validated dataset descriptor with its paths resolved.

    Attributes:
        yaml_path: the descriptor file.
        root: the dataset root folder (absolute).
        format: ``"yolo_mask"`` or ``"coco"``.
        splits: split name -> value as written in the YAML (yolo_mask: folder name; coco: annotations path).
        det_names: detection class names (class id = index).
        seg_tasks: task name -> ``SegTask``, in the descriptor's order; ``{"seg": ...}`` for a single-task
            (``seg_names``) dataset.
        ignore_index: mask value of unlabeled pixels (and letterbox padding), every task.
        coco: split name -> ``CocoSplit`` (coco format only).
    """

    yaml_path: Path
    root: Path
    format: str
    splits: dict[str, str]
    det_names: list[str]
    seg_tasks: dict[str, SegTask]
    ignore_index: int = 255
    coco: dict[str, CocoSplit] = field(default_factory=dict)

    @property
    def nc_det(self) -> int:
        return len(self.det_names)

    @property
    def multi_seg(self) -> bool:
        """Whether the dataset declares ``seg_tasks`` (masks under ``masks/<task>/``), even a single one."""
        return list(self.seg_tasks) != [SINGLE_TASK]

    @property
    def seg_names(self) -> list[str]:
        """The class names of the single seg task; ``DatasetError`` for a ``seg_tasks`` dataset (use
        ``seg_tasks``), so that code written for one task cannot silently take one of several."""
        if self.multi_seg:
            raise DatasetError(
                f"{self.yaml_path}: field 'seg_tasks': this dataset has segmentation tasks "
                f"{', '.join(self.seg_tasks)}; this part of mtkd handles a single 'seg_names' task"
            )
        return self.seg_tasks[SINGLE_TASK].names

    @property
    def nc_seg(self) -> int:
        return len(self.seg_names)

    def yolo_dirs(self, split: str) -> tuple[Path, Path, Path]:
        """``(images, labels, masks)`` folders of a yolo_mask split; ``masks`` is the parent of the tasks' mask
        folders (``mask_dirs``) in a ``seg_tasks`` dataset."""
        folder = self.splits[self.require_split(split)]
        return self.root / "images" / folder, self.root / "labels" / folder, self.root / "masks" / folder

    def mask_dirs(self, split: str) -> dict[str, Path]:
        """Task -> mask folder of a yolo_mask split: ``masks/<split>`` (single task), ``masks/<task>/<split>``."""
        folder = self.splits[self.require_split(split)]
        if not self.multi_seg:
            return {SINGLE_TASK: self.root / "masks" / folder}
        return {t: self.root / "masks" / t / folder for t in self.seg_tasks}

    def require_split(self, split: str) -> str:
        """Return ``split`` if the descriptor defines it, else raise ``DatasetError`` listing the defined ones."""
        if split not in self.splits:
            raise DatasetError(
                f"{self.yaml_path}: no split '{split}' (defined: {', '.join(self.splits) or 'none'})"
            )
        return split


def _fail(yaml_path: Path, key: str, msg: str) -> DatasetError:
    return DatasetError(f"{yaml_path}: field '{key}': {msg}")


def _names(yaml_path: Path, raw: dict, key: str) -> list[str]:
    value = raw[key]
    if isinstance(value, Mapping):  # Ultralytics style {0: a, 1: b}
        keys = list(value)
        if keys != list(range(len(keys))):
            raise _fail(yaml_path, key, f"a mapping must have keys 0..{len(keys) - 1} in order, got {keys}")
        value = list(value.values())
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(yaml_path, key, f"expected a non-empty list of class names, got {value!r}")
    dup = sorted({v for v in value if value.count(v) > 1})
    if dup:
        raise _fail(yaml_path, key, f"duplicate class names {dup}")
    return list(value)


def _seg_tasks(yaml_path: Path, value: Any) -> dict[str, SegTask]:
    """``seg_tasks``: task name -> class list, or -> ``{names: [...], lines: bool}``."""
    import re

    if not isinstance(value, Mapping) or not value:
        raise _fail(yaml_path, "seg_tasks", f"expected a mapping of task name -> class names, got {value!r}")
    tasks: dict[str, SegTask] = {}
    for name, spec in value.items():
        key = f"seg_tasks.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            raise _fail(
                yaml_path, key, "a task name is lower-case letters, digits and _ (starting with a letter)"
            )
        if name in RESERVED_TASK_NAMES:
            raise _fail(
                yaml_path, key, f"'{name}' is reserved ({', '.join(RESERVED_TASK_NAMES)}); rename the task"
            )
        lines = name in LINE_TASK_NAMES
        if isinstance(spec, Mapping):
            for k in spec:
                if k not in SEG_TASK_KEYS:
                    hint = did_you_mean(str(k), SEG_TASK_KEYS) or f" (known: {', '.join(SEG_TASK_KEYS)})"
                    raise _fail(yaml_path, f"{key}.{k}", f"unknown field{hint}")
            if "names" not in spec:
                raise _fail(yaml_path, f"{key}.names", "missing (required)")
            if "lines" in spec:
                if not isinstance(spec["lines"], bool):
                    raise _fail(yaml_path, f"{key}.lines", f"expected true or false, got {spec['lines']!r}")
                lines = spec["lines"]
            names = _names(yaml_path, {f"{key}.names": spec["names"]}, f"{key}.names")
        else:
            names = _names(yaml_path, {key: spec}, key)
        if len(names) < 2:
            raise _fail(
                yaml_path,
                key,
                f"a task needs at least 2 classes (e.g. background and the class), got {names}",
            )
        tasks[name] = SegTask(name, names, lines)
    return tasks


def _coco_split(yaml_path: Path, root: Path, key: str, value: Any) -> CocoSplit:
    if isinstance(value, str):
        return CocoSplit(root / "images" / value, root / "annotations" / f"instances_{value}.json")
    if not isinstance(value, Mapping):
        raise _fail(
            yaml_path, key, f"expected a string or a mapping with keys {COCO_SPLIT_KEYS}, got {value!r}"
        )
    unknown = set(value) - set(COCO_SPLIT_KEYS)
    missing = {"images", "annotations"} - set(value)
    if unknown or missing:
        what = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise _fail(
            yaml_path, key, f"{what}; expected {{images: DIR, annotations: FILE.json, masks: DIR (optional)}}"
        )
    for k, v in value.items():
        if not isinstance(v, str):
            raise _fail(yaml_path, f"{key}.{k}", f"expected a path string, got {v!r}")
    masks = value.get("masks")
    return CocoSplit(root / value["images"], root / value["annotations"], root / masks if masks else None)


def _check_exists(yaml_path: Path, key: str, path: Path, *, is_dir: bool) -> None:
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        kind = "folder" if is_dir else "file"
        raise _fail(yaml_path, key, f"{kind} {path} does not exist")


def load_data_yaml(path: str | Path, *, check_paths: bool = True) -> DataSpec:
    """Load and validate a dataset descriptor.

    Args:
        path: the YAML file.
        check_paths: also require the root and every split's folders/files to exist.

    Raises:
        DatasetError: unreadable YAML, unknown/missing field, bad value or missing path; the message names the
            YAML file and the field.
    """
    import yaml

    yaml_path = Path(path)
    if not yaml_path.is_file():
        raise DatasetError(f"{yaml_path}: dataset descriptor not found")
    try:
        raw = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{yaml_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise DatasetError(
            f"{yaml_path}: expected a mapping of fields ({', '.join(KEYS)}), got {type(raw).__name__}"
        )
    for key in raw:
        if key not in KEYS:
            hint = did_you_mean(key, KEYS) or f" (known fields: {', '.join(KEYS)})"
            raise _fail(yaml_path, key, f"unknown field{hint}")
    for key in ("format", "det_names"):
        if key not in raw:
            raise _fail(yaml_path, key, "missing (required)")
    if ("seg_names" in raw) == ("seg_tasks" in raw):
        what = "both given" if "seg_names" in raw else "missing (required)"
        raise _fail(yaml_path, "seg_names", f"{what}: give seg_names (one task) or seg_tasks (several)")

    fmt = raw["format"]
    if fmt not in FORMATS:
        hint = did_you_mean(fmt, FORMATS)
        raise _fail(yaml_path, "format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}{hint}")
    root_value = raw.get("path", ".")
    if not isinstance(root_value, str) or not root_value:
        raise _fail(yaml_path, "path", f"expected a folder path string, got {root_value!r}")
    root = (yaml_path.parent / root_value).resolve()  # absolute values stay absolute
    det_names = _names(yaml_path, raw, "det_names")
    if "seg_names" in raw:
        seg_tasks = {SINGLE_TASK: SegTask(SINGLE_TASK, _names(yaml_path, raw, "seg_names"))}
    else:
        if fmt != "yolo_mask":
            raise _fail(yaml_path, "seg_tasks", f"needs format yolo_mask (masks/<task>/<split>/), got {fmt}")
        seg_tasks = _seg_tasks(yaml_path, raw["seg_tasks"])
    ignore_index = raw.get("ignore_index", 255)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool) or not 0 <= ignore_index <= 255:
        raise _fail(
            yaml_path,
            "ignore_index",
            f"expected an integer in 0..255 (masks are uint8), got {ignore_index!r}",
        )
    for task in seg_tasks.values():
        if ignore_index < task.nc:
            where = "seg class" if not raw.get("seg_tasks") else f"class of seg task '{task.name}'"
            raise _fail(
                yaml_path,
                "ignore_index",
                f"{ignore_index} collides with {where} '{task.names[ignore_index]}'; use a value >= {task.nc}",
            )
    if not any(s in raw for s in SPLITS):
        raise _fail(yaml_path, "train", f"no split defined; give at least one of {', '.join(SPLITS)}")

    splits: dict[str, str] = {}
    coco: dict[str, CocoSplit] = {}
    for s in SPLITS:
        if s not in raw:
            continue
        if fmt == "coco":
            coco[s] = _coco_split(yaml_path, root, s, raw[s])
            splits[s] = raw[s] if isinstance(raw[s], str) else raw[s]["annotations"]
        elif isinstance(raw[s], str) and raw[s]:
            splits[s] = raw[s]
        else:
            raise _fail(
                yaml_path, s, f"expected a split folder name (images/<name>/ under the root), got {raw[s]!r}"
            )
    spec = DataSpec(
        yaml_path=yaml_path,
        root=root,
        format=fmt,
        splits=splits,
        det_names=det_names,
        seg_tasks=seg_tasks,
        ignore_index=ignore_index,
        coco=coco,
    )
    if check_paths:
        _check_paths(spec)
    return spec


def _check_paths(spec: DataSpec) -> None:
    _check_exists(spec.yaml_path, "path", spec.root, is_dir=True)
    if spec.format == "coco":
        for s, c in spec.coco.items():
            _check_exists(spec.yaml_path, f"{s}.images", c.images, is_dir=True)
            _check_exists(spec.yaml_path, f"{s}.annotations", c.annotations, is_dir=False)
            if c.masks is not None:
                _check_exists(spec.yaml_path, f"{s}.masks", c.masks, is_dir=True)
        return
    for s in spec.splits:
        for folder in (*spec.yolo_dirs(s)[:2], *spec.mask_dirs(s).values()):
            _check_exists(spec.yaml_path, s, folder, is_dir=True)
