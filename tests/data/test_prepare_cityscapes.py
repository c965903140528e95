"""prepare_dataset cityscapes: a tiny leftImg8bit + gtFine fixture -> exact instance boxes, train-id masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtkd.data.check import check_dataset
from mtkd.data.prepare.cli import main
from mtkd.errors import DatasetError

W, H = 64, 48
# label ids (cityscapesScripts labels.py)
EGO, PARKING, ROAD, BUILDING, POLE, SKY = 1, 9, 7, 11, 17, 23
PERSON, RIDER, CAR, TRUCK, CARAVAN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 29, 32, 33


def _scene_a() -> tuple[np.ndarray, np.ndarray]:
    """labelIds and instanceIds: a car, a car seen in two parts, a person, a 9 px rider, a car group,
    a caravan, a bicycle at the right edge; ego vehicle and parking (no train id)."""
    lab = np.full((H, W), ROAD, np.uint8)
    lab[0:8], lab[8:10], lab[44:48], lab[10:21, 0:4] = SKY, BUILDING, EGO, PARKING
    inst = lab.astype(np.uint16)

    def put(rows, cols, label, instance):
        lab[rows, cols] = label
        inst[rows, cols] = instance

    put(slice(12, 22), slice(10, 30), CAR, 26001)
    put(slice(25, 30), slice(40, 45), CAR, 26002)
    put(slice(25, 30), slice(45, 50), POLE, POLE)  # occludes the middle of car 26002
    put(slice(25, 30), slice(50, 55), CAR, 26002)
    put(slice(30, 36), slice(5, 9), PERSON, 24000)
    put(slice(38, 41), slice(20, 23), RIDER, 25000)  # 9 px < 16: no box
    put(slice(30, 34), slice(30, 38), CAR, CAR)  # a "car group": id < 1000, no box
    put(slice(36, 40), slice(40, 48), CARAVAN, 29000)  # no train id: no box, ignored in the mask
    put(slice(40, 44), slice(56, 64), BICYCLE, 33000)
    return lab, inst


def _scene_b() -> tuple[np.ndarray, np.ndarray]:
    lab = np.full((H, W), ROAD, np.uint8)
    inst = lab.astype(np.uint16)
    lab[10:20, 10:20], inst[10:20, 10:20] = TRUCK, 27000
    lab[30:35, 30:35], inst[30:35, 30:35] = MOTORCYCLE, 32005
    return lab, inst


def make_cityscapes(root: Path, scenes: dict | None = None) -> Path:
    rng = np.random.default_rng(1)
    zeros = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint16)
    scenes = scenes or {
        ("train", "aachen", "aachen_000000_000019"): _scene_a(),
        ("train", "bochum", "bochum_000000_000313"): _scene_b(),
        ("val", "frankfurt", "frankfurt_000000_000294"): _scene_b(),
        ("test", "berlin", "berlin_000000_000019"): zeros,  # Cityscapes' test labels are placeholders
    }
    for (split, city, stem), (lab, inst) in scenes.items():
        img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            img_dir / f"{stem}_leftImg8bit.png"
        )
        Image.fromarray(lab).save(gt_dir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst).save(gt_dir / f"{stem}_gtFine_instanceIds.png")  # 16-bit PNG
        (gt_dir / f"{stem}_gtFine_color.png").write_bytes(b"")  # other gtFine files are not read
    return root


@pytest.fixture
def cityscapes(tmp_path) -> Path:
    return make_cityscapes(tmp_path / "cityscapes")


def _labels(out: Path, split: str, stem: str) -> list[str]:
    return (out / "labels" / split / f"{stem}.txt").read_text().splitlines()


def test_cityscapes_instance_boxes_and_train_ids(cityscapes, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["cityscapes", str(cityscapes), str(out)]) == 0
    # det ids: person 0, rider 1, car 2, truck 3, bus 4, train 5, motorcycle 6, bicycle 7
    assert _labels(out, "train", "aachen_000000_000019") == [
        "0 0.109375 0.687500 0.062500 0.125000",  # person (5, 30, 9, 36)
        "2 0.312500 0.354167 0.312500 0.208333",  # car (10, 12, 30, 22)
        "2 0.742188 0.572917 0.234375 0.104167",  # car in two parts, one box (40, 25, 55, 30)
        "7 0.937500 0.875000 0.125000 0.083333",  # bicycle (56, 40, 64, 44)
    ]  # no box: the 9 px rider, the car group, the caravan
    assert _labels(out, "train", "bochum_000000_000313") == [
        "3 0.234375 0.312500 0.156250 0.208333",  # truck (10, 10, 20, 20)
        "6 0.507812 0.677083 0.078125 0.104167",  # motorcycle (30, 30, 35, 35)
    ]
    lab, _ = _scene_a()
    expected = np.full((H, W), 255, np.uint8)
    for label_id, train_id in {
        ROAD: 0,
        BUILDING: 2,
        POLE: 5,
        SKY: 10,
        PERSON: 11,
        RIDER: 12,
        CAR: 13,
        BICYCLE: 18,
    }.items():
        expected[lab == label_id] = train_id
    mask = np.asarray(Image.open(out / "masks/train/aachen_000000_000019.png"))
    np.testing.assert_array_equal(mask, expected)
    assert (mask[44:48] == 255).all() and (mask[36:40, 40:48] == 255).all()  # ego vehicle, caravan
    assert (out / "images/train/aachen_000000_000019.png").read_bytes() == (
        cityscapes / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    ).read_bytes()
    test_mask = np.asarray(Image.open(out / "masks/test/berlin_000000_000019.png"))
    assert (test_mask == 255).all() and _labels(out, "test", "berlin_000000_000019") == []

    text = (out / "data.yaml").read_text()
    assert "det_names: [person, rider, car, truck, bus, train, motorcycle, bicycle]\n" in text
    assert "seg_names: [road, sidewalk, building, wall, fence, pole, traffic_light, traffic_sign, " in text
    report = check_dataset(out / "data.yaml")
    assert report.ok, [str(p) for p in report.problems]
    assert list(report.stats) == ["train", "val", "test"] and report.spec.nc_seg == 19
    printed = capsys.readouterr().out
    assert (
        "train: 2 images, 6 boxes (person 1, rider 0, car 2, truck 1, bus 0, train 0, motorcycle 1, bicycle 1)"
        in printed
    )
    assert "rider under min area 1" in printed
    assert "every mask pixel of test is ignore_index 255" in printed


def test_cityscapes_min_area_and_splits(cityscapes, tmp_path):
    out = tmp_path / "out"
    assert main(["cityscapes", str(cityscapes), str(out), "--min-area", "9", "--splits", "train"]) == 0
    assert "1 0.335938 0.822917 0.046875 0.062500" in _labels(out, "train", "aachen_000000_000019")  # rider
    assert "val:" not in (out / "data.yaml").read_text()


def test_cityscapes_label_id_out_of_range(tmp_path):
    lab, inst = _scene_b()
    lab[0, 0] = 34
    root = make_cityscapes(tmp_path / "cs", {("train", "ulm", "ulm_000000_000001"): (lab, inst)})
    with pytest.raises(DatasetError) as e:
        main(["cityscapes", str(root), str(tmp_path / "out")])
    assert str(root / "gtFine/train/ulm/ulm_000000_000001_gtFine_labelIds.png") in str(e.value)
    assert "id(s) 34 outside the known range (label ids 0-33)" in str(e.value)


def test_cityscapes_instance_id_out_of_range(tmp_path):
    lab, inst = _scene_b()
    inst[0, 0] = 40001
    root = make_cityscapes(tmp_path / "cs", {("train", "ulm", "ulm_000000_000001"): (lab, inst)})
    with pytest.raises(DatasetError, match=r"instanceIds\.png: instanceIds PNG has id\(s\) 40 outside"):
        main(["cityscapes", str(root), str(tmp_path / "out")])


def test_cityscapes_missing_instances_skip_the_image(cityscapes, tmp_path, capsys):
    (cityscapes / "gtFine/train/bochum/bochum_000000_000313_gtFine_instanceIds.png").unlink()
    out = tmp_path / "out"
    assert main(["cityscapes", str(cityscapes), str(out)]) == 0
    assert "1 image(s) skipped: annotation file missing" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images/train").iterdir()) == ["aachen_000000_000019.png"]


def test_cityscapes_layout_not_recognised(tmp_path):
    (tmp_path / "cs" / "leftImg8bit").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        main(["cityscapes", str(tmp_path / "cs"), str(tmp_path / "out")])
    assert (
        f"expected folders {tmp_path / 'cs/leftImg8bit'} and {tmp_path / 'cs/gtFine'} (missing: gtFine)"
        in str(e.value)
    )
