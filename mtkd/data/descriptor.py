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
KEYS = ("path", "format", *SPLITS, "det_names", "seg_names", "ignore_index", "description")
COCO_SPLIT_KEYS = ("images", "annotations", "masks")


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
        seg_names: segmentation class names (mask value = index).
        ignore_index: mask value of unlabeled pixels (and letterbox padding).
        coco: split name -> ``CocoSplit`` (coco format only).
    """

    yaml_path: Path
    root: Path
    format: str
    splits: dict[str, str]
    det_names: list[str]
    seg_names: list[str]
    ignore_index: int = 255
    coco: dict[str, CocoSplit] = field(default_factory=dict)

    @property
    def nc_det(self) -> int:
        return len(self.det_names)

    @property
    def nc_seg(self) -> int:
        return len(self.seg_names)

    def yolo_dirs(self, split: str) -> tuple[Path, Path, Path]:
        """``(images, labels, masks)`` folders of a yolo_mask split."""
        folder = self.splits[self.require_split(split)]
        return self.root / "images" / folder, self.root / "labels" / folder, self.root / "masks" / folder

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
    for key in ("format", "det_names", "seg_names"):
        if key not in raw:
            raise _fail(yaml_path, key, "missing (required)")

    fmt = raw["format"]
    if fmt not in FORMATS:
        hint = did_you_mean(fmt, FORMATS)
        raise _fail(yaml_path, "format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}{hint}")
    root_value = raw.get("path", ".")
    if not isinstance(root_value, str) or not root_value:
        raise _fail(yaml_path, "path", f"expected a folder path string, got {root_value!r}")
    root = (yaml_path.parent / root_value).resolve()  # absolute values stay absolute
    det_names, seg_names = _names(yaml_path, raw, "det_names"), _names(yaml_path, raw, "seg_names")
    ignore_index = raw.get("ignore_index", 255)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool) or not 0 <= ignore_index <= 255:
        raise _fail(
            yaml_path,
            "ignore_index",
            f"expected an integer in 0..255 (masks are uint8), got {ignore_index!r}",
        )
    if ignore_index < len(seg_names):
        raise _fail(
            yaml_path,
            "ignore_index",
            f"{ignore_index} collides with seg class "
            f"'{seg_names[ignore_index]}'; use a value >= {len(seg_names)}",
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
        seg_names=seg_names,
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
        for folder in spec.yolo_dirs(s):
            _check_exists(spec.yaml_path, s, folder, is_dir=True)
