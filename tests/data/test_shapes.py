"""The built-in shapes dataset: deterministic, valid, boxes consistent with masks, a stuff class without boxes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtkd.cli import run_command
from mtkd.data.check import check_dataset
from mtkd.data.check import main as check_main
from mtkd.data.descriptor import load_data_yaml
from mtkd.data.shapes import DET_NAMES, SEG_NAMES, main, make_shapes
from mtkd.errors import ConfigError, OutputError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path):
    a = make_shapes(tmp_path / "a", n_train=5, n_val=3, size=64, seed=7).parent
    b = make_shapes(tmp_path / "b", n_train=5, n_val=3, size=64, seed=7).parent
    fa, fb = _files(a), _files(b)
    assert len(fa) == 3 * (5 + 3) + 1
    assert fa == fb


def test_different_seed_gives_different_images(shapes_master, tmp_path):
    other = make_shapes(tmp_path / "c", n_train=8, n_val=4, size=64, seed=1).parent
    fa, fb = _files(shapes_master), _files(other)
    assert fa.keys() == fb.keys()
    images = [k for k in fa if k.startswith("images")]
    assert all(fa[k] != fb[k] for k in images)


def test_fresh_set_is_clean_and_descriptor_matches(shapes_master, capsys):
    assert check_main([str(shapes_master / "data.yaml")]) == 0
    assert "OK, no problems found" in capsys.readouterr().out
    spec = load_data_yaml(shapes_master / "data.yaml")
    assert spec.format == "yolo_mask" and spec.root == shapes_master.resolve()
    assert spec.det_names == list(DET_NAMES) and spec.seg_names == list(SEG_NAMES)
    assert "road" in spec.seg_names and "road" not in spec.det_names


def test_boxes_are_the_boxes_of_visible_mask_pixels(shapes_master):
    """Each box is tight around pixels of its class; every object pixel lies inside a box of its class."""
    size, n_boxes, road_pixels = 64, 0, 0
    for label in sorted((shapes_master / "labels").rglob("*.txt")):
        split = label.parent.name
        mask = np.asarray(Image.open(shapes_master / "masks" / split / f"{label.stem}.png"))
        road_pixels += int((mask == SEG_NAMES.index("road")).sum())
        covered = np.zeros((len(DET_NAMES), size, size), bool)
        for line in label.read_text().splitlines():
            c, cx, cy, w, h = (float(v) for v in line.split())
            x1, y1 = round((cx - w / 2) * size), round((cy - h / 2) * size)
            x2, y2 = round((cx + w / 2) * size), round((cy + h / 2) * size)
            inside = mask[y1:y2, x1:x2] == 2 + int(c)
            # tight: each edge row/column of the box holds a pixel of the object's class
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), label
            covered[int(c), y1:y2, x1:x2] = True
            n_boxes += 1
        for c in range(len(DET_NAMES)):
            assert not ((mask == 2 + c) & ~covered[c]).any(), f"{label}: class {c} pixels outside its boxes"
    assert n_boxes > 20 and road_pixels > 0


def test_objects_vary_in_size_including_small_ones(shapes_master):
    sides = []
    for label in (shapes_master / "labels").rglob("*.txt"):
        sides += [max(float(v) for v in line.split()[3:]) * 64 for line in label.read_text().splitlines()]
    assert min(sides) <= 8 and max(sides) >= 20


def test_regenerate_replaces_own_output_and_refuses_foreign_folder(tmp_path):
    out = tmp_path / "set"
    make_shapes(out, n_train=4, n_val=2, size=32, seed=0)
    make_shapes(out, n_train=2, n_val=1, size=32, seed=0)  # fewer files: stale ones must be gone
    assert len(list((out / "images" / "train").iterdir())) == 2
    assert check_dataset(out / "data.yaml").ok
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        make_shapes(foreign, n_train=1, n_val=1, size=32)


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "s"), "--n-train", "2", "--n-val", "1", "--size", "32"]) == 0
    assert "data.yaml" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--size"):
        main(["--out", str(tmp_path / "t"), "--size", "8"])
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def _cli_error(out: Path, capsys) -> str:
    """Run ``mtkd make_shapes --out out``; assert it fails with one line and no traceback; return the line."""
    args = ["--out", str(out), "--n-train", "1", "--n-val", "1", "--size", "32"]
    assert run_command("make_shapes", args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_output_under_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert f"{tmp_path / 'file'}" in _cli_error(tmp_path / "file" / "set", capsys)
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_output_folder_is_a_one_line_error_and_keeps_what_was_there(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    own = make_shapes(tmp_path / "own", n_train=1, n_val=1, size=32).parent  # our output, to be locked
    before = _files(own)
    for folder in (locked, own):
        folder.chmod(0o500)
    try:
        with pytest.raises(
            OutputError, match=f"^{re.escape(str(locked))}: cannot write into the output folder"
        ):
            make_shapes(locked, n_train=1, n_val=1, size=32)
        assert f"{own}: cannot write into the output folder (permission denied)" in _cli_error(own, capsys)
        assert _files(own) == before and not any(locked.iterdir())
    finally:
        for folder in (locked, own):
            folder.chmod(0o700)


def test_committed_descriptor_points_at_the_default_location():
    repo = Path(__file__).resolve().parents[2]
    spec = load_data_yaml(repo / "datasets" / "shapes.yaml", check_paths=False)
    assert spec.root == (repo / "datasets" / "shapes").resolve()
    assert (
        spec.det_names == list(DET_NAMES) and spec.seg_names == list(SEG_NAMES) and spec.ignore_index == 255
    )
    assert spec.splits == {"train": "train", "val": "val"}
