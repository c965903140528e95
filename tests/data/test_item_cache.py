"""``val_cache``: an evaluation split's prepared items kept in memory between passes."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from mtkd.config import TrainConfig
from mtkd.data.build import build_dataloader, build_dataset
from mtkd.data.descriptor import load_data_yaml
from mtkd.data.item_cache import AUTO_FRACTION, CACHE_MODES, cache_decision, nbytes
from mtkd.data.samples import GroundTruth


def test_nbytes_counts_tensors_and_arrays_in_nested_items(tmp_path):
    gt = GroundTruth({"seg": np.zeros((4, 5), np.uint8)}, np.zeros((2, 4), np.float32), np.zeros(2), tmp_path)
    item = {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "pad": (0, 1), "ground_truth": gt, "p": "x"}
    assert nbytes(item) == 3 * 64 + 20 + 32 + 16
    assert nbytes([item, item]) == 2 * nbytes(item)


def test_cache_decision_by_mode_and_memory(shapes_copy):
    spec = load_data_yaml(shapes_copy)
    val = build_dataset(spec, "val", imgsz=64, augment=False, ground_truth=True)
    train = build_dataset(spec, "train", imgsz=64, augment=True)
    need = nbytes(val[0]) * len(val)
    assert cache_decision(val, "off") == (False, "off")
    assert cache_decision(val, "ram")[0] and not cache_decision(train, "ram")[0]  # augmented: never
    assert cache_decision(val, "auto", available=int(need / AUTO_FRACTION) + 1)[0]
    ok, why = cache_decision(val, "auto", available=int(need / AUTO_FRACTION) - 1)
    assert not ok and "val_cache=ram" in why
    with pytest.raises(ValueError, match="val_cache: expected one of auto, ram, off, got 'yes'"):
        cache_decision(val, "yes")
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "val_cache")
    assert field.default == "auto" and tuple(field.metadata["choices"]) == CACHE_MODES


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("pin", [False, True])
@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")  # no accelerator here: pinning is skipped
def test_cached_passes_need_no_files_and_equal_uncached_batches(shapes_copy, workers, pin):
    """Without pinning the loader keeps the collated batches in this process; with it (CUDA) the workers keep
    the items. Either way every later pass needs no file and yields what an uncached loader yields."""
    spec = load_data_yaml(shapes_copy)
    kw = dict(imgsz=64, batch=2, augment=False, shuffle=False, ground_truth=True)
    want = list(build_dataloader(spec, "val", workers=0, **kw))
    loader = build_dataloader(
        spec, "val", workers=workers, cache="ram", prime_next=True, pin_memory=pin, **kw
    )
    assert (loader.keep_batches, loader.dataset.keep_items) == ((False, True) if pin else (True, False))
    assert loader.prime_next == (pin and workers > 0)  # nothing to prepare ahead when the batches are kept
    first = list(loader)
    shutil.rmtree(shapes_copy.parent / "images" / "val")  # only the cached items can serve the next passes
    for got in (first, list(loader), list(loader)):
        assert len(got) == len(want) == 2
        for a, b in zip(got, want, strict=True):
            assert a["paths"] == b["paths"] and torch.equal(a["images"], b["images"])
            assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["boxes"], b["boxes"])
            for ga, gb in zip(a["ground_truth"], b["ground_truth"], strict=True):
                assert np.array_equal(ga.mask, gb.mask) and np.array_equal(ga.boxes, gb.boxes)


def test_kept_batches_replay_as_copies_and_only_after_a_complete_pass(shapes_copy, monkeypatch):
    spec = load_data_yaml(shapes_copy)
    kw = dict(imgsz=64, batch=1, augment=False, shuffle=False, workers=0, cache="ram")
    loader = build_dataloader(spec, "val", **kw)
    reads = []
    real = type(loader.dataset).__getitem__
    monkeypatch.setattr(type(loader.dataset), "__getitem__", lambda ds, i: reads.append(i) or real(ds, i))
    for _ in zip(range(2), loader):  # an abandoned pass keeps nothing
        pass
    assert loader._kept is None and reads == [0, 1]
    first = list(loader)
    assert reads == [0, 1, 0, 1, 2, 3] and len(first) == 4
    first[0]["n_real"] = 1  # a consumer adds a key: later passes do not see it
    second = list(loader)
    assert reads == [0, 1, 0, 1, 2, 3]  # replayed: the dataset is not read again
    assert "n_real" not in second[0] and second[0] is not first[0]
    assert all(a["images"] is b["images"] for a, b in zip(first, second, strict=True))
    shuffled = build_dataloader(spec, "val", **{**kw, "shuffle": True})
    assert not shuffled.keep_batches and shuffled.dataset.keep_items  # the items repeat, not the batches
