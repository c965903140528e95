"""A tiny COCO-format dataset (polygons, compressed and uncompressed RLE, crowd, a stuff class) loads exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mtkd.data.build import build_dataset
from mtkd.data.check import main as check_main
from mtkd.data.coco import CocoSource, _segmentation_problem
from mtkd.data.descriptor import load_data_yaml
from mtkd.errors import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

# A sample COCO descriptor. Each split is either a mapping (paths relative to `path`):
#   {images: DIR, annotations: FILE.json, masks: DIR (optional: PNG masks named like the images,
#    used instead of rasterising the annotations)}
# or a string S, short for {images: images/S, annotations: annotations/instances_S.json}.
# Categories map to classes by name: det_names -> boxes; seg_names -> mask pixels (a category only in
# seg_names, like road, gives pixels and no box); iscrowd=1 -> no box, pixels = ignore_index.
SAMPLE_YAML = """\
path: .
format: coco
train: {images: pics, annotations: ann/train.json}
val: val            # = images/val + annotations/instances_val.json
det_names: [car, person]
seg_names: [background, road, car, person]
ignore_index: 255
"""

CAR_POLY = [10, 5, 30, 5, 30, 20, 10, 20]
ROAD_POLY = [0, 30, 60, 30, 60, 40, 0, 40]
PERSON_POLY = [5, 5, 20, 5, 12, 25]


def _person_mask() -> np.ndarray:
    m = np.zeros((40, 60), np.uint8)
    m[22:36, 40:50] = 1
    return m


def _car2_mask() -> np.ndarray:
    m = np.zeros((50, 50), np.uint8)
    m[30:45, 25:47] = 1
    return m


def _crowd_mask() -> np.ndarray:
    m = np.zeros((50, 50), np.uint8)
    m[0:10, 30:50] = 1
    return m


def _rle(m: np.ndarray, compressed: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = m.ravel(order="F")  # uncompressed: run lengths starting with zeros, column-major
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(m.shape), "counts": ([0] + counts) if flat[0] else counts}


def _instances() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 60, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 50, "height": 50},
        ],
        "categories": [{"id": 7, "name": "person"}, {"id": 3, "name": "car"}, {"id": 11, "name": "road"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "bbox": [10, 5, 20, 15],
                "segmentation": [CAR_POLY],
                "iscrowd": 0,
                "area": 300,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "bbox": [40, 22, 10, 14],
                "segmentation": _rle(_person_mask()),
                "iscrowd": 0,
                "area": 140,
            },
            {
                "id": 3,
                "image_id": 1,
                "category_id": 11,
                "segmentation": [ROAD_POLY],
                "iscrowd": 0,
                "area": 600,
            },
            {
                "id": 4,
                "image_id": 2,
                "category_id": 3,
                "bbox": [25, 30, 22, 15],
                "segmentation": _rle(_car2_mask(), compressed=False),
                "iscrowd": 0,
                "area": 330,
            },
            {
                "id": 5,
                "image_id": 2,
                "category_id": 7,
                "bbox": [30, 0, 20, 10],
                "segmentation": _rle(_crowd_mask(), compressed=False),
                "iscrowd": 1,
                "area": 200,
            },
            {
                "id": 6,
                "image_id": 2,
                "category_id": 7,
                "bbox": [5, 5, 15, 20],
                "segmentation": [PERSON_POLY],
                "iscrowd": 0,
                "area": 150,
            },
        ],
    }


def _write(root: Path, instances: dict | str | None = None, masks: bool = False) -> Path:
    (root / "pics").mkdir(parents=True)
    (root / "ann").mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (40, 60)), ("b.png", (50, 50))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "pics" / name)
    text = instances if isinstance(instances, str) else json.dumps(instances or _instances(), indent=1)
    (root / "ann" / "train.json").write_text(text)
    yaml_text = SAMPLE_YAML.replace("val: val ", "# no val split here")
    if masks:
        (root / "pm").mkdir()
        yaml_text = yaml_text.replace("ann/train.json}", "ann/train.json, masks: pm}")
    (root / "data.yaml").write_text(yaml_text)
    return root / "data.yaml"


def _poly(poly: list, h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([poly], h, w))[..., 0].astype(bool)


def test_sample_yaml_convention_for_string_splits(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "pics").mkdir()
    (tmp_path / "ann").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "ann" / "train.json").write_text("{}")
    (tmp_path / "annotations" / "instances_val.json").write_text("{}")
    (tmp_path / "data.yaml").write_text(SAMPLE_YAML)
    spec = load_data_yaml(tmp_path / "data.yaml")
    assert spec.coco["val"].images == (tmp_path / "images" / "val").resolve()
    assert spec.coco["val"].annotations == (tmp_path / "annotations" / "instances_val.json").resolve()
    assert spec.coco["train"].masks is None and spec.splits["train"] == "ann/train.json"


def test_polygons_and_rle_load_with_correct_boxes_and_masks(tmp_path):
    src = CocoSource(load_data_yaml(_write(tmp_path)), "train")
    a, b = src[0], src[1]
    # image a: boxes in JSON order, category ids mapped by name (car=0, person=1); road gives no box
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 20], [40, 22, 50, 36]])
    np.testing.assert_array_equal(a.labels, [0, 1])
    expected = np.zeros((40, 60), np.uint8)
    expected[_poly(ROAD_POLY, 40, 60)] = 1  # largest first: road, then car, then person on top
    expected[_poly(CAR_POLY, 40, 60)] = 2
    expected[_person_mask().astype(bool)] = 3
    np.testing.assert_array_equal(a.mask, expected)
    assert _poly(CAR_POLY, 40, 60)[5:20, 10:30].all() and (a.mask == 3).sum() == 140
    assert (a.mask == 1).sum() >= 400  # the road band survives under the person
    # image b: uncompressed RLE car, crowd person -> ignore and no box, polygon person
    np.testing.assert_array_equal(b.boxes, [[25, 30, 47, 45], [5, 5, 20, 25]])
    np.testing.assert_array_equal(b.labels, [0, 1])
    expected = np.zeros((50, 50), np.uint8)
    expected[_car2_mask().astype(bool)] = 2
    expected[_crowd_mask().astype(bool)] = 255
    expected[_poly(PERSON_POLY, 50, 50)] = 3
    np.testing.assert_array_equal(b.mask, expected)


def test_masks_folder_replaces_rasterising(tmp_path):
    yaml_path = _write(tmp_path, masks=True)
    given = (np.arange(40 * 60).reshape(40, 60) % 4).astype(np.uint8)
    Image.fromarray(given).save(tmp_path / "pm" / "a.png")
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "pm" / "b.png")
    a = CocoSource(load_data_yaml(yaml_path), "train")[0]
    np.testing.assert_array_equal(a.mask, given)
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 20], [40, 22, 50, 36]])


def test_letterboxed_item_maps_boxes(tmp_path):
    ds = build_dataset(load_data_yaml(_write(tmp_path)), "train", imgsz=64, augment=False)
    item = ds[0]  # 60x40 -> 64x43, pad top 10
    assert (
        item["orig_size"] == (40, 60) and item["pad"] == (10, 0) and item["scale"] == pytest.approx(64 / 60)
    )
    sx, sy = 64 / 60, 43 / 40
    np.testing.assert_allclose(
        item["boxes"].numpy(),
        [[10 * sx, 5 * sy + 10, 30 * sx, 20 * sy + 10], [40 * sx, 22 * sy + 10, 50 * sx, 36 * sy + 10]],
        atol=1e-4,
    )
    assert (item["mask"][:10] == 255).all() and (item["mask"][53:] == 255).all()
    assert set(item["mask"][10:53].unique().tolist()) <= {0, 1, 2, 3}


def _break(edit):
    def make(tmp_path):
        data = _instances()
        edit(data)
        return _write(tmp_path, data)

    return make


BROKEN = {
    "json_does_not_parse": (
        lambda p: _write(p, '{"images": [\n  {"id": 1,,}\n]}'),
        ":2: JSON does not parse",
    ),
    "missing_top_key": (_break(lambda d: d.pop("categories")), "missing key 'categories'"),
    "missing_ann_key": (
        _break(lambda d: d["annotations"][0].pop("image_id")),
        "annotations[0] (id 1): missing keys",
    ),
    "unknown_image_id": (_break(lambda d: d["annotations"][1].update(image_id=99)), "unknown image_id 99"),
    "unknown_category_id": (
        _break(lambda d: d["annotations"][3].update(category_id=5)),
        "unknown category_id 5",
    ),
    "unmapped_category": (
        _break(lambda d: d["categories"].append({"id": 9, "name": "dog"})),
        "category 'dog' (id 9) is in neither det_names nor seg_names",
    ),
    "box_outside": (_break(lambda d: d["annotations"][0].update(bbox=[50, 5, 20, 15])), "lies outside"),
    "zero_area_box": (
        _break(lambda d: d["annotations"][0].update(bbox=[10, 5, 0, 15])),
        "zero or negative area",
    ),
    "duplicate_stem": (
        _break(lambda d: d["images"].append({"id": 3, "file_name": "a.jpg", "width": 1, "height": 1})),
        "duplicate stem 'a'",
    ),
    "missing_segmentation": (
        _break(lambda d: d["annotations"][1].pop("segmentation")),
        "missing 'segmentation'",
    ),
    # malformed RLE: caught before pycocotools' C decoder, which crashes or silently decodes garbage
    "rle_counts_garbage_string": (
        _break(lambda d: d["annotations"][1]["segmentation"].update(counts="!!garbage~~")),
        "annotations[1] (id 2): segmentation RLE 'counts' must be a COCO compressed RLE string",
    ),
    "rle_counts_truncated_string": (  # valid characters, but the last number never ends
        _break(lambda d: d["annotations"][1]["segmentation"].update(counts="zzzz")),
        "annotations[1] (id 2): segmentation RLE 'counts' must be a COCO compressed RLE string",
    ),
    "rle_counts_wrong_sum": (
        _break(lambda d: d["annotations"][3]["segmentation"].update(counts=[5, 10])),
        "annotations[3] (id 4): segmentation RLE 'counts' cover 15 pixels, expected height*width = 2500",
    ),
    "rle_counts_wrong_type": (
        _break(lambda d: d["annotations"][3]["segmentation"].update(counts=5)),
        "annotations[3] (id 4): segmentation RLE 'counts' must be",
    ),
    "rle_counts_not_integers": (
        _break(lambda d: d["annotations"][3]["segmentation"].update(counts=["a", 2500])),
        "annotations[3] (id 4): segmentation RLE 'counts' must be",
    ),
    "rle_size_wrong_type": (
        _break(lambda d: d["annotations"][3]["segmentation"].update(size=5)),
        "annotations[3] (id 4): segmentation RLE 'size' must be the image's [height, width] [50, 50], got 5",
    ),
    # ids: JSON true is not image 1, "3" and 3.0 are not category 3
    "image_id_bool": (
        _break(lambda d: d["annotations"][0].update(image_id=True)),
        "annotations[0] (id 1): 'image_id' must be an integer, got true",
    ),
    "category_id_float": (
        _break(lambda d: d["annotations"][0].update(category_id=3.0)),
        "annotations[0] (id 1): 'category_id' must be an integer, got 3.0",
    ),
    "annotation_id_string": (
        _break(lambda d: d["annotations"][0].update(id="1")),
        'annotations[0] (id "1"): \'id\' must be an integer, got "1"',
    ),
    "iscrowd_string": (  # "0" would otherwise be truthy: a crowd region without a box
        _break(lambda d: d["annotations"][0].update(iscrowd="0")),
        "annotations[0] (id 1): 'iscrowd' must be 0 or 1, got \"0\"",
    ),
    "image_entry_id_bool": (
        _break(lambda d: d["images"][0].update(id=True)),
        "images[0]: 'id' must be an integer, got true",
    ),
    "image_entry_width_bool": (
        _break(lambda d: d["images"][1].update(width=True)),
        "images[1]: 'width' must be an integer, got true",
    ),
    "category_entry_id_bool": (
        _break(lambda d: d["categories"][0].update(id=True)),
        "categories[0]: 'id' must be an integer, got true",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_json_is_reported(kind, tmp_path, capsys):
    make, message = BROKEN[kind]
    yaml_path = make(tmp_path)
    assert check_main([str(yaml_path)]) == 1
    out = capsys.readouterr().out
    json_path = tmp_path / "ann" / "train.json"
    assert any(line.startswith(str(json_path)) and message in line for line in out.splitlines()), out
    with pytest.raises(
        DatasetError, match=re.escape(message.lstrip(":2"))
    ):  # the reader refuses with the same message
        build_dataset(load_data_yaml(yaml_path), "train", imgsz=64, augment=False)


def test_every_valid_compressed_rle_passes_the_counts_check():
    """The counts check decodes compressed strings like pycocotools: no valid RLE is refused."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        assert _segmentation_problem(_rle(m), h, w) is None
        assert _segmentation_problem(_rle(m, compressed=False), h, w) is None


def test_missing_or_resized_image_is_reported(tmp_path, capsys):
    yaml_path = _write(tmp_path)
    assert check_main([str(yaml_path)]) == 0
    (tmp_path / "pics" / "a.png").unlink()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "pics" / "b.png")
    assert check_main([str(yaml_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'pics' / 'a.png'}: image file is missing" in out
    assert f"{tmp_path / 'pics' / 'b.png'}: image is 10x10 but train.json says 50x50" in out
