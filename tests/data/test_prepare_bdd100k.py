"""prepare_dataset bdd100k: a tiny YOLOP-layout fixture -> exact boxes per class map, drivable masks per encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtkd.data.check import check_dataset
from mtkd.data.prepare.cli import main
from mtkd.errors import DatasetError

W, H = 64, 48
A, B, V = "0a0a0b1a-7c39d841", "0a0e3fb8-f3b8da51", "b1c66a42-6f7d68ca"


def _box(category: str, x1, y1, x2, y2, **extra) -> dict:
    return {"category": category, "id": 0, "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, **extra}


def _objects_a() -> list[dict]:
    poly = {"poly2d": [[0, 30, "L"], [63, 30, "L"], [63, 47, "L"]]}
    return [
        _box("car", 10.5, 12.25, 30.5, 22.25, attributes={"occluded": False}),
        _box("bus", 40, 5, 70, 20),  # clipped to x2 = 64
        _box("truck", 1, 1, 4, 4),  # 9 px^2 < 16: no box
        _box("train", -5, 30, 10, 40),  # clipped to x1 = 0
        _box("person", 5, 5, 10, 20),
        _box("rider", 44, 30, 48, 36),
        _box("traffic light", 50, 30, 52, 36, attributes={"trafficLightColor": "red"}),  # 12 px^2
        _box("traffic sign", 20, 30, 30, 35),
        _box("bike", 30, 36, 36, 44),
        _box("motor", 44, 36, 50, 44),
        {"category": "area/drivable", "id": 1, **poly},
        {"category": "lane/single white", "id": 2, **poly},
        {"category": "car", "id": 3},  # no box2d
        _box("car", 70, 10, 80, 20),  # outside the image
    ]


def _da_binary() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[30:] = 255
    return m


def _da_ids() -> np.ndarray:  # 0/1/2 ids
    m = np.zeros((H, W), np.uint8)
    m[20:30], m[30:] = 1, 2
    return m


def make_bdd(root: Path, samples: dict | None = None) -> Path:
    rng = np.random.default_rng(2)
    samples = samples or {
        ("train", A): (_objects_a(), _da_binary()),
        ("train", B): ([], _da_ids()),
        ("val", V): ([_box("car", 0, 0, 64, 48)], np.zeros((H, W), np.uint8)),
    }
    for (split, stem), (objects, da) in samples.items():
        for folder in ("images", "det_annotations", "da_seg_annotations", "ll_seg_annotations"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / split / f"{stem}.jpg"
        )
        label = {
            "name": stem,
            "frames": [{"timestamp": 10000, "objects": objects}],
            "attributes": {"weather": "clear"},
        }
        (root / "det_annotations" / split / f"{stem}.json").write_text(json.dumps(label))
        Image.fromarray(da).save(root / "da_seg_annotations" / split / f"{stem}.png")
    return root


@pytest.fixture
def bdd(tmp_path) -> Path:
    return make_bdd(tmp_path / "bdd")


def _labels(out: Path, split: str, stem: str) -> list[str]:
    return (out / "labels" / split / f"{stem}.txt").read_text().splitlines()


def _mask(out: Path, split: str, stem: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / split / f"{stem}.png"))


def test_bdd_vehicle_classes_and_drivable_masks(bdd, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bdd100k", str(bdd), str(out)]) == 0
    assert _labels(out, "train", A) == [  # car, bus, truck, train -> vehicle 0; clipped boxes
        "0 0.078125 0.729167 0.156250 0.208333",  # train (0, 30, 10, 40)
        "0 0.320312 0.359375 0.312500 0.208333",  # car (10.5, 12.25, 30.5, 22.25)
        "0 0.812500 0.260417 0.375000 0.312500",  # bus (40, 5, 64, 20)
    ]
    assert _labels(out, "train", B) == [] and _labels(out, "val", V) == [
        "0 0.500000 0.500000 1.000000 1.000000"
    ]
    np.testing.assert_array_equal(_mask(out, "train", A), (_da_binary() == 255).astype(np.uint8))  # 0/255
    expected_b = np.zeros((H, W), np.uint8)
    expected_b[20:] = 1  # bdd2018 ids: 1 direct, 2 alternative -> drivable
    np.testing.assert_array_equal(_mask(out, "train", B), expected_b)
    assert not _mask(out, "val", V).any()
    assert (out / "images/train" / f"{A}.jpg").read_bytes() == (
        bdd / "images/train" / f"{A}.jpg"
    ).read_bytes()

    text = (out / "data.yaml").read_text()
    assert "det_names: [vehicle]\nseg_names: [background, drivable]\n" in text and "test:" not in text
    report = check_dataset(out / "data.yaml")
    assert report.ok, [str(p) for p in report.problems]
    printed = capsys.readouterr().out
    assert "train: 2 images, 3 boxes (vehicle 3)" in printed
    for skipped in ("car empty after clipping 1", "car without box2d 1", "person (not a det class) 1",
                    "traffic light (not a det class) 1", "truck under min area 1"):  # fmt: skip
        assert skipped in printed
    assert "area/" not in printed and "lane/" not in printed


def test_bdd_bdd10_classes(bdd, tmp_path):
    out = tmp_path / "out"
    assert main(["bdd100k", str(bdd), str(out), "--classes", "bdd10", "--splits", "train"]) == 0
    assert _labels(out, "train", A) == [
        "0 0.117188 0.260417 0.078125 0.312500",  # person -> pedestrian (5, 5, 10, 20)
        "1 0.718750 0.687500 0.062500 0.125000",  # rider
        "2 0.320312 0.359375 0.312500 0.208333",  # car
        "4 0.812500 0.260417 0.375000 0.312500",  # bus
        "5 0.078125 0.729167 0.156250 0.208333",  # train
        "6 0.734375 0.833333 0.093750 0.166667",  # motor -> motorcycle
        "7 0.515625 0.833333 0.093750 0.166667",  # bike -> bicycle
        "9 0.390625 0.677083 0.156250 0.104167",  # traffic sign (the 12 px^2 traffic light has no box)
    ]
    text = (out / "data.yaml").read_text()
    assert (
        "det_names: [pedestrian, rider, car, truck, bus, train, motorcycle, bicycle, traffic_light, traffic_sign]"
        in text
    )
    assert check_dataset(out / "data.yaml").ok


def test_bdd_da_encodings(tmp_path):
    root = make_bdd(tmp_path / "bdd", {("train", B): ([], _da_ids())})
    out = tmp_path / "out"
    assert main(["bdd100k", str(root), str(out), "--da-encoding", "bdd2020"]) == 0
    expected = np.zeros((H, W), np.uint8)
    expected[:30] = 1  # 0 direct, 1 alternative -> drivable; 2 background
    np.testing.assert_array_equal(_mask(out, "train", B), expected)
    with pytest.raises(
        DatasetError, match=r"id\(s\) 1, 2 outside the known range \(0 background / 255 drivable\)"
    ):
        main(["bdd100k", str(root), str(out), "--da-encoding", "binary", "--overwrite"])


def test_bdd_da_value_out_of_range(tmp_path):
    da = _da_binary()
    da[0, 0] = 7
    root = make_bdd(tmp_path / "bdd", {("train", A): ([], da)})
    with pytest.raises(DatasetError) as e:
        main(["bdd100k", str(root), str(tmp_path / "out")])
    assert str(root / "da_seg_annotations/train" / f"{A}.png") in str(e.value)
    assert (
        "id(s) 7, 255 outside the known range (0/255 (YOLOP binary) or 0/1/2 (BDD100K drivable ids))"
        in str(e.value)
    )


@pytest.mark.parametrize(
    ("label", "why"),
    [
        (
            {"name": "x", "labels": []},
            r"expected a BDD per-image label JSON with frames\[0\]\.objects \(no 'frames' list\)",
        ),
        ({"frames": [{"timestamp": 0}]}, r"\(no 'objects' list in frames\[0\]\)"),
        ({"frames": [{"objects": [{"box2d": {}}]}]}, r"frames\[0\]\.objects\[0\] has no string 'category'"),
        (
            {"frames": [{"objects": [_box("car", 1, 2, "3", 4)]}]},
            r"\(car\): box2d needs numeric x1, y1, x2, y2",
        ),
    ],
)
def test_bdd_bad_json(tmp_path, label, why):
    root = make_bdd(tmp_path / "bdd", {("train", A): ([], _da_binary())})
    path = root / "det_annotations/train" / f"{A}.json"
    path.write_text(json.dumps(label))
    with pytest.raises(DatasetError, match=why) as e:
        main(["bdd100k", str(root), str(tmp_path / "out")])
    assert str(e.value).startswith(f"{path}: ")
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"not a readable JSON file \(JSONDecodeError"):
        main(["bdd100k", str(root), str(tmp_path / "out"), "--overwrite"])


def test_bdd_missing_json_skips_the_image_and_unlabeled_test_images_are_skipped(bdd, tmp_path, capsys):
    (bdd / "det_annotations/train" / f"{B}.json").unlink()
    (bdd / "images/test").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(bdd / "images/test/cabc30fc-e7726578.jpg")
    out = tmp_path / "out"
    assert main(["bdd100k", str(bdd), str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"1 image(s) skipped: annotation file missing (first: {bdd / 'det_annotations/train' / B}.json)"
        in printed
    )
    assert f"note: split test skipped: neither {bdd / 'det_annotations/test'} nor" in printed
    assert "test:" not in (out / "data.yaml").read_text() and check_dataset(out / "data.yaml").ok
    with pytest.raises(
        DatasetError, match=r"det_annotations/test: folder not found; expected the test detection"
    ):
        main(["bdd100k", str(bdd), str(tmp_path / "out2"), "--splits", "train,test"])


def test_bdd_layout_not_recognised(tmp_path):
    for folder in ("images/train", "det_annotations/train"):
        (tmp_path / "bdd" / folder).mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        main(["bdd100k", str(tmp_path / "bdd"), str(tmp_path / "out")])
    assert "not BDD100K in the YOLOP layout" in str(e.value) and "(missing: da_seg_annotations)" in str(
        e.value
    )
    assert str(tmp_path / "bdd/da_seg_annotations") in str(e.value)


def _lane_masks(root: Path, values: tuple[int, int] = (0, 255)) -> dict[str, np.ndarray]:
    """A lane stroke per image under ll_seg_annotations (background, lane values)."""
    out = {}
    for p in sorted((root / "images").rglob("*.jpg")):
        m = np.full((H, W), values[0], np.uint8)
        m[:, 20:22] = values[1]
        Image.fromarray(m).save(root / "ll_seg_annotations" / p.parent.name / f"{p.stem}.png")
        out[p.stem] = (m == values[1]).astype(np.uint8)
    return out


@pytest.mark.parametrize("values", [(0, 255), (0, 1)])
def test_lane_lines_make_a_two_task_dataset(bdd, tmp_path, values, capsys):
    from mtkd.data.descriptor import load_data_yaml

    lanes = _lane_masks(bdd, values)
    out = tmp_path / "out"
    assert main(["bdd100k", str(bdd), str(out), "--lane"]) == 0
    spec = load_data_yaml(out / "data.yaml")
    assert {t: s.names for t, s in spec.seg_tasks.items()} == {
        "drivable": ["background", "drivable"],
        "lane": ["background", "lane"],
    }
    assert spec.seg_tasks["lane"].lines and not spec.seg_tasks["drivable"].lines
    assert not (out / "masks" / "train").exists()
    got = np.asarray(Image.open(out / "masks" / "lane" / "train" / f"{A}.png"))
    assert np.array_equal(got, lanes[A])
    da = np.asarray(Image.open(out / "masks" / "drivable" / "train" / f"{A}.png"))
    assert np.array_equal(da, (_da_binary() == 255).astype(np.uint8))
    assert check_dataset(out / "data.yaml").ok
    assert "lane lines" in (out / "data.yaml").read_text()


def test_lane_errors_name_the_file(bdd, tmp_path):
    _lane_masks(bdd)
    bad = bdd / "ll_seg_annotations" / "train" / f"{B}.png"
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=rf"{B}.png.*lane-line mask"):
        main(["bdd100k", str(bdd), str(tmp_path / "out"), "--lane"])
    (bdd / "ll_seg_annotations" / "val").rename(bdd / "ll_val_moved")
    with pytest.raises(
        DatasetError, match=r"ll_seg_annotations/val: folder not found; expected the val lane-line"
    ):
        main(["bdd100k", str(bdd), str(tmp_path / "out2"), "--lane"])
