"""Fixtures for the data tests: a small generated shapes set, and a writer for hand-made yolo_mask datasets."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtkd.data.shapes import make_shapes


@pytest.fixture(scope="session")
def shapes_master(tmp_path_factory) -> Path:
    """A small shapes set (8 train / 4 val, 64 px), generated once per session; copy it before changing it."""
    return make_shapes(tmp_path_factory.mktemp("shapes") / "set", n_train=8, n_val=4, size=64, seed=0).parent


@pytest.fixture
def shapes_copy(shapes_master, tmp_path) -> Path:
    """A private copy of the small shapes set; returns its ``data.yaml``."""
    dst = tmp_path / "shapes"
    shutil.copytree(shapes_master, dst)
    return dst / "data.yaml"


YoloSample = tuple[
    np.ndarray, np.ndarray, Sequence[str]
]  # image uint8 [H,W,3], mask uint8 [H,W], label lines


def write_yolo(
    root: Path,
    splits: dict[str, list[YoloSample]],
    det_names: list[str],
    seg_names: list[str],
    ignore_index: int = 255,
) -> Path:
    """Write a yolo_mask dataset under ``root`` (PNG images/masks, one label file per sample); return data.yaml."""
    for split, samples in splits.items():
        for sub in ("images", "labels", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i, (image, mask, lines) in enumerate(samples):
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")
            (root / "labels" / split / f"{i:04d}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(
        "path: .\nformat: yolo_mask\n"
        + "".join(f"{s}: {s}\n" for s in splits)
        + f"det_names: [{', '.join(det_names)}]\nseg_names: [{', '.join(seg_names)}]\nignore_index: {ignore_index}\n"
    )
    return yaml_path


@pytest.fixture
def yolo_writer() -> Callable[..., Path]:
    return write_yolo
