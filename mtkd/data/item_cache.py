"""Keeping an evaluation split's prepared items in memory between passes (``val_cache``).

An evaluation loader prepares the same items every pass (no augmentation): decoding the image and mask files
and letterboxing them is ~80% of an item's cost (0.6 ms of 0.75 ms per 128-px shapes item on the 2-core CPU).
``mtkd.data.build.build_dataloader`` keeps either the collated batches of the first complete pass in the main
process (``MtkdDataLoader.keep_batches``, when batches are not pinned: later passes need no worker at all) or,
for a loader pinning its batches for CUDA, the items: ``MultiTaskDataset`` then keeps each item it prepared, so
every pass after the first only collates; under persistent DataLoader workers each worker keeps the items it
prepared, and the workers are handed the same batches each pass (sequential sampler, round-robin from worker
0), so the split is held once in all.

``cache_decision`` says whether to cache: ``"ram"`` always, ``"off"`` never, ``"auto"`` when the split's
estimated size (one item's bytes x items) is at most ``AUTO_FRACTION`` of the memory available now, as
Ultralytics checks before ``cache=ram``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

CACHE_MODES = ("auto", "ram", "off")
AUTO_FRACTION = 0.1  # of the available memory, for the whole split


def nbytes(obj: Any) -> int:
    """Bytes of the tensors and arrays in ``obj`` (nested dicts, lists, tuples and dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(nbytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def cache_decision(dataset: Any, mode: str, *, available: int | None = None) -> tuple[bool, str]:
    """``(cache, why)`` for ``dataset`` (``len``, ``augment``, ``dataset[0]``) under ``mode``.

    ``why`` is one line for the log. An augmenting dataset is never cached (its items change every epoch);
    ``"auto"`` reads one item to estimate the split's size. ``ValueError`` for an unknown ``mode``.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"val_cache: expected one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode == "off" or len(dataset) == 0:
        return False, "off" if mode == "off" else "empty split"
    if dataset.augment:
        return False, "not cached: augmented items change every epoch"
    if mode == "ram":
        return True, f"{len(dataset)} items kept in RAM after their first pass (val_cache=ram)"
    need = nbytes(dataset[0]) * len(dataset)
    avail = available_bytes() if available is None else available
    fits = need <= AUTO_FRACTION * avail
    size = f"{len(dataset)} items, ~{need / 2**20:.1f} MiB"
    limit = f"{AUTO_FRACTION:.0%} of {avail / 2**30:.1f} GiB available"
    if fits:
        return True, f"{size} kept in RAM after their first pass (val_cache=auto: within {limit})"
    return False, f"not cached: {size} is over {limit} (val_cache=ram forces it)"
