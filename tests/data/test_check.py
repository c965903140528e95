"""check_dataset: each injected problem is reported with its file (and line); descriptor errors exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mtkd.data.check import check_dataset, main
from mtkd.data.descriptor import load_data_yaml
from mtkd.data.samples import SampleError
from mtkd.data.yolo_mask import YoloMaskSource
from mtkd.errors import DatasetError


def _append(path: Path, line: str) -> int:
    """Append a label line; return its 1-based line number."""
    lines = path.read_text().splitlines()
    path.write_text("".join(f"{ln}\n" for ln in [*lines, line]))
    return len(lines) + 1


def _corrupt_image(root):
    (root / "images/train/000001.png").write_bytes(b"not a png at all")
    return [("images/train/000001.png", None, "image is unreadable")]


def _missing_image(root):  # its label and mask are left without an image
    (root / "images/val/000002.png").unlink()
    return [("labels/val/000002.txt", None, "has no image"), ("masks/val/000002.png", None, "has no image")]


def _missing_mask(root):
    (root / "masks/train/000002.png").unlink()
    return [("masks/train/000002.png", None, "mask file is missing")]


def _mask_size(root):
    p = root / "masks/train/000003.png"
    Image.fromarray(np.asarray(Image.open(p))[:40]).save(p)
    return [("masks/train/000003.png", None, "does not match its image")]


def _mask_values(root):
    p = root / "masks/val/000000.png"
    m = np.asarray(Image.open(p)).copy()
    m[0, :3] = 7
    m[1, 0] = 255  # ignore_index is allowed
    Image.fromarray(m).save(p)
    return [
        ("masks/val/000000.png", None, "mask values {7} are neither seg classes 0..5 nor ignore_index 255")
    ]


def _mask_rgb(root):
    p = root / "masks/train/000004.png"
    Image.open(p).convert("RGB").save(p)
    return [("masks/train/000004.png", None, "mode RGB")]


def _mask_16bit_over_255(root):  # a uint8 cast would wrap 300 to class id 44
    p = root / "masks/val/000001.png"
    m = np.asarray(Image.open(p)).astype(np.uint16)
    m[0, 0] = 300
    Image.fromarray(m).save(p)
    assert Image.open(p).mode == "I;16"
    return [("masks/val/000001.png", None, "mask values 0..300 (mode I;16) do not fit class ids 0..255")]


def _float_image(root):  # 32-bit float greyscale: no bit depth to scale by, so refused
    p = root / "images/val/000003.png"
    Image.fromarray(np.asarray(Image.open(p))[..., 0].astype(np.float32)).save(p.with_suffix(".tif"))
    p.unlink()
    return [("images/val/000003.tif", None, "image mode F (32-bit) is not supported")]


def _label(line: str, message: str, stem: str = "000005"):
    def inject(root):
        n = _append(root / f"labels/train/{stem}.txt", line)
        return [(f"labels/train/{stem}.txt", n, message)]

    return inject


def _duplicate_stem(root):
    shutil.copy(root / "images/train/000006.png", root / "images/train/000006.jpg")
    return [("images/train/000006.jpg", None, "duplicate stem '000006': also 000006.png")]


INJECTIONS = {
    "unreadable_image": _corrupt_image,
    "missing_image": _missing_image,
    "missing_mask": _missing_mask,
    "mask_size_mismatch": _mask_size,
    "mask_bad_values": _mask_values,
    "mask_not_single_channel": _mask_rgb,
    "mask_16bit_over_255": _mask_16bit_over_255,
    "image_32bit_float": _float_image,
    "label_field_count": _label("1 0.5 0.5 0.2", "expected 5 fields"),
    "label_non_numeric": _label("1 0.5 abc 0.2 0.2", "non-numeric field"),
    "label_non_finite": _label("1 0.5 nan 0.2 0.2", "non-finite value"),
    "label_class_out_of_range": _label("4 0.5 0.5 0.2 0.2", "class id 4 is not a det class 0..3", "000007"),
    "label_negative_class": _label("-1 0.5 0.5 0.2 0.2", "class id -1 is not a det class"),
    "label_box_outside": _label("0 0.95 0.5 0.3 0.2", "lies outside the 64x64 image"),
    "label_zero_area": _label("2 0.5 0.5 0 0.2", "zero or negative area"),
    "duplicate_stem": _duplicate_stem,
}


@pytest.mark.parametrize("kind", list(INJECTIONS))
def test_each_problem_is_reported_with_file_and_line(kind, shapes_copy, capsys):
    root = shapes_copy.parent
    expected = INJECTIONS[kind](root)
    assert main([str(shapes_copy)]) == 1
    out = capsys.readouterr().out.splitlines()
    for rel, line, message in expected:
        where = f"{(root / rel)}:{line}: " if line else f"{root / rel}: "
        hits = [o for o in out if o.startswith(where)]
        assert hits and message in hits[0], f"no line starting {where!r} with {message!r} in:\n" + "\n".join(
            out
        )
    assert out[-1].endswith(f"{len(expected)} problem(s) found")


def test_all_problems_at_once_are_all_listed(shapes_copy):
    root = shapes_copy.parent
    expected = [e for inject in INJECTIONS.values() for e in inject(root)]
    report = check_dataset(shapes_copy)
    got = {(str(p.path), p.line) for p in report.problems}
    assert {(str(root / rel), line) for rel, line, _ in expected} <= got
    assert len(report.problems) == len(expected)


def test_16bit_images_and_masks_read_like_their_8bit_originals(shapes_copy):
    """16-bit images keep their relative intensity (value >> 8), the checker calls them fine and the reader
    returns the 8-bit content; a 16-bit mask whose values are all class ids <= 255 reads as those ids."""
    root = shapes_copy.parent
    grey_path, mask_path = root / "images/train/000000.png", root / "masks/train/000000.png"
    rgb_path = root / "images/train/000001.png"
    grey = np.asarray(Image.open(grey_path))[..., 1]
    rgb = np.asarray(Image.open(rgb_path))
    mask = np.asarray(Image.open(mask_path))
    Image.fromarray(grey.astype(np.uint16) * 257).save(grey_path)  # 16-bit grey PNG, PIL mode I;16
    cv2.imwrite(str(rgb_path), rgb[..., ::-1].astype(np.uint16) * 257)  # 16-bit RGB PNG
    Image.fromarray(mask.astype(np.uint16)).save(mask_path)
    assert Image.open(grey_path).mode == "I;16" and Image.open(mask_path).mode == "I;16"
    assert check_dataset(shapes_copy).ok
    src = YoloMaskSource(load_data_yaml(shapes_copy), "train")
    np.testing.assert_array_equal(src[0].image, np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(src[0].mask, mask)
    np.testing.assert_array_equal(src[1].image, rgb)


# 64x64 = 4096 pixels: over 2x the limit PIL raises DecompressionBombError, over 1x it warns
@pytest.mark.parametrize("limit", [1000, 3000])
def test_image_over_the_pil_pixel_limit_is_a_listed_problem(limit, shapes_copy, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    root = shapes_copy.parent
    assert main([str(shapes_copy)]) == 1
    out = capsys.readouterr().out.splitlines()
    for sub, what in (("images", "image"), ("masks", "mask")):
        where = f"{root / sub / 'train/000000.png'}: "
        assert any(o.startswith(where) and f"{what} is over PIL's pixel limit" in o for o in out), out
    assert out[-1].endswith(f"{2 * (8 + 4)} problem(s) found")  # every image and every mask
    with pytest.raises(SampleError) as e:
        YoloMaskSource(load_data_yaml(shapes_copy), "train")[0]
    assert str(e.value).startswith(f"{root / 'images/train/000000.png'}: image is over") and "\n" not in str(
        e.value
    )


def test_summary_counts_match_the_files(shapes_master):
    report = check_dataset(shapes_master / "data.yaml")
    assert report.ok
    n_lines = sum(len(p.read_text().splitlines()) for p in (shapes_master / "labels/train").glob("*.txt"))
    empty = sum(not p.read_text().strip() for p in (shapes_master / "labels/train").glob("*.txt"))
    st = report.stats["train"]
    assert st.images == 8 and int(st.boxes.sum()) == n_lines and st.empty == empty
    assert list(st.pixels) == ["seg"] and int(st.pixels["seg"].sum()) == 8 * 64 * 64
    assert report.stats["val"].images == 4


def test_missing_label_file_means_no_objects(shapes_copy):
    root = shapes_copy.parent
    (root / "labels/train/000000.txt").unlink()
    report = check_dataset(shapes_copy)
    assert report.ok and report.stats["train"].images == 8


def _descriptor(tmp_path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


GOOD = (
    "path: {root}\nformat: yolo_mask\ntrain: train\nval: val\n"
    "det_names: [ellipse, rectangle, triangle, star]\n"
    "seg_names: [background, road, ellipse, rectangle, triangle, star]\n"
)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda t: t.replace("det_names:", "# det_names:"), "det_names"),
        (lambda t: t.replace("format: yolo_mask", "format: yolo"), "format"),
        (lambda t: t.replace("format: yolo_mask", "formatt: yolo_mask"), "formatt"),
        (lambda t: t.replace("path: ", "path: /nonexistent"), "path"),
        (lambda t: t.replace("val: val", "val: valid"), "val"),
        (lambda t: t + "ignore_index: 3\n", "ignore_index"),
        (lambda t: t.replace("seg_names: [background,", "seg_names: [road,"), "seg_names"),
    ],
)
def test_descriptor_errors_exit_2_naming_yaml_and_field(edit, field, shapes_master, tmp_path, capsys):
    yaml_path = _descriptor(tmp_path, edit(GOOD.format(root=shapes_master)))
    assert main([str(yaml_path)]) == 2
    err = capsys.readouterr().err
    assert str(yaml_path) in err and f"field '{field}'" in err and len(err.strip().splitlines()) == 1


def test_descriptor_suggestions_and_unparsable_yaml(shapes_master, tmp_path):
    bad = _descriptor(tmp_path, GOOD.format(root=shapes_master).replace("format: yolo_mask", "format: coc"))
    with pytest.raises(DatasetError, match="did you mean 'coco'"):
        load_data_yaml(bad)
    with pytest.raises(DatasetError, match="not valid YAML"):
        load_data_yaml(_descriptor(tmp_path, "path: [unclosed\n"))
    with pytest.raises(DatasetError, match="not found"):
        load_data_yaml(tmp_path / "absent.yaml")
