"""``prime_next``: an evaluation loader hands its workers the next pass's first batches when a pass ends."""

from __future__ import annotations

import torch

from mtkd.data.build import build_dataloader
from mtkd.data.descriptor import load_data_yaml


def _names(batches: list[dict]) -> list[list[str]]:
    return [[g.path.name for g in b["ground_truth"]] for b in batches]


def test_primed_loader_prefetches_the_next_pass_and_yields_the_same_batches(shapes_copy):
    spec = load_data_yaml(shapes_copy)
    kw = dict(imgsz=64, batch=1, augment=False, shuffle=False, ground_truth=True)
    loader = build_dataloader(spec, "val", workers=2, prefetch_factor=1, prime_next=True, **kw)
    plain = build_dataloader(spec, "val", workers=0, **kw)
    want = list(plain)
    assert len(want) == 4
    first = list(loader)
    it = loader._iterator
    assert loader._primed is not None and it._send_idx == 2  # prefetch_factor x workers batches handed out
    second = list(loader)
    loader.set_epoch(1)  # drops the primed pass; the next iter() resets the workers
    assert loader._primed is None
    for _ in zip(range(1), loader):  # an abandoned pass: not primed, the next one starts afresh
        pass
    third = list(loader)
    assert loader._iterator is it  # the same persistent workers served every pass
    for got in (first, second, third):
        assert _names(got) == _names(want)
        assert all(torch.equal(a["images"], b["images"]) for a, b in zip(got, want, strict=True))
    assert not build_dataloader(spec, "val", workers=0, prime_next=True, **kw).prime_next  # needs workers
