"""Datasets and data loaders from a descriptor (docs/INTERFACES.md "Data").

Reproducibility: an item is a pure function of ``(seed, epoch, index)`` — the augmentation of item ``i`` in
epoch ``e`` is seeded with ``SeedSequence([seed, e, i])`` — so results do not depend on the number of worker
processes or on which worker reads which item. Call ``loader.set_epoch(e)`` (or ``dataset.set_epoch(e)``
and ``sampler.set_epoch(e)``) at the start of each epoch, before iterating, to vary augmentation and
shuffling reproducibly.

Workers are persistent by default (started once, not every epoch). The dataset's epoch lives in a
shared-memory tensor, so ``set_epoch`` in the main process reaches workers started earlier: a persistent
worker only fetches an epoch's items after ``iter(loader)`` has handed out its indices, so it reads the epoch
set before that call. Each worker runs OpenCV single-threaded (the workers are the parallelism).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from mtkd.data.coco import CocoSource
from mtkd.data.collate import collate
from mtkd.data.descriptor import DataSpec
from mtkd.data.item_cache import cache_decision
from mtkd.data.transforms import AugmentParams, JointTransform
from mtkd.data.yolo_mask import YoloMaskSource
from mtkd.errors import ConfigError
from mtkd.utils.log import get_logger

log = get_logger(__name__)


def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class MultiTaskDataset(Dataset):
    """Items of one split (see ``JointTransform`` for the item layout); ``set_epoch`` varies augmentation.

    ``source`` gives the untransformed samples: ``source.paths`` (image files, item order) and
    ``source[i] -> RawSample`` (original-resolution image, mask, boxes, labels), e.g. for evaluation in
    original coordinates. With ``ground_truth`` each item also carries ``"ground_truth"``: the sample's
    ``GroundTruth`` (masks, boxes, labels at original resolution, read with the image), which ``collate``
    passes on as the batch's ``ground_truth`` list, so evaluation does not read the files again.
    """

    def __init__(
        self,
        spec: DataSpec,
        split: str,
        *,
        imgsz: int,
        augment: bool,
        seed: int = 0,
        params: AugmentParams | None = None,
        ground_truth: bool = False,
    ) -> None:
        self.spec, self.split, self.imgsz, self.augment, self.seed = spec, split, imgsz, augment, seed
        self.ground_truth = bool(ground_truth)
        # keep_items: return each prepared item again instead of preparing it anew (mtkd.data.item_cache;
        # only for datasets without augmentation, whose items do not change); the items are not copied, so
        # consumers treat them as read-only (collate stacks their tensors into new ones)
        self.keep_items = False
        self._items: dict[int, dict[str, Any]] = {}
        self.source = CocoSource(spec, split) if spec.format == "coco" else YoloMaskSource(spec, split)
        self.transform = JointTransform(imgsz, augment=augment, ignore_index=spec.ignore_index, params=params)
        # shared with the worker processes (forked or spawned), which may outlive an epoch (persistent_workers)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.keep_items and index in self._items:
            return self._items[index]
        raw = self.source[index]
        item = self.transform(raw, seed=_derive_seed(self.seed, self.epoch, index))
        if self.ground_truth:
            item["ground_truth"] = raw.ground_truth()
        if self.keep_items and not self.augment:
            self._items[index] = item
        return item

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in self.source.paths]


def build_dataset(
    spec: DataSpec,
    split: str,
    *,
    imgsz: int,
    augment: bool,
    seed: int = 0,
    params: AugmentParams | None = None,
    ground_truth: bool = False,
) -> MultiTaskDataset:
    """Dataset of ``split`` (``ground_truth``: items carry their original-resolution ``GroundTruth``, see
    ``MultiTaskDataset``); raises ``ConfigError`` for a bad ``imgsz``, ``DatasetError`` for bad files."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise ConfigError(f"imgsz: expected a positive multiple of 32, got {imgsz!r}")
    return MultiTaskDataset(
        spec, split, imgsz=imgsz, augment=augment, seed=seed, params=params, ground_truth=ground_truth
    )


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` in each worker from its torch seed (itself seeded); run
    OpenCV single-threaded there (torch already is), so ``workers`` processes do not each start a thread per
    core, and without OpenCL, whose runtime each worker would otherwise probe on its first OpenCV call (slow
    where a GPU driver installs an OpenCL ICD). Neither changes OpenCV's results on numpy arrays.

    ``setNumThreads(0)`` (sequential, as Ultralytics sets it), not ``setNumThreads(1)``: once the parent has
    called OpenCV from other threads (the dataset index decodes in a thread pool), ``setNumThreads(1)`` in a
    forked worker waits forever on the parent's thread-pool state, and the loader with it."""
    import random

    import cv2

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    cv2.setNumThreads(0)
    cv2.ocl.setUseOpenCL(False)


class MtkdDataLoader(DataLoader):
    """A ``DataLoader`` with ``set_epoch(epoch)``: reseeds augmentation and shuffling for that epoch.

    ``prime_next`` (persistent workers only; for loaders whose batches do not depend on the epoch, such as
    evaluation loaders): as soon as an iteration is exhausted, hand the workers the next iteration's first
    ``prefetch_factor`` batches per worker, so they are prepared while the main process does other work
    (scoring, a training epoch) instead of after the next ``iter(loader)``, which otherwise starts every pass
    waiting for its first batch. ``set_epoch`` drops a primed iteration.

    ``keep_batches`` (loaders whose batches do not depend on the epoch: evaluation loaders, ``val_cache``): keep
    the batches of the first complete pass in this process and replay them on every later pass, with no worker,
    file, collation or inter-process transfer left (an abandoned pass keeps nothing). Each replayed batch is a
    shallow copy (a consumer may add keys without changing later passes); its tensors are the kept ones, which
    consumers treat as read-only, as they do a loader's. Replaces ``prime_next``, which would prepare batches no
    pass reads.
    """

    def __init__(
        self, *args: Any, seed: int = 0, prime_next: bool = False, keep_batches: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.keep_batches = bool(keep_batches)
        self.prime_next = bool(prime_next) and self.persistent_workers and not self.keep_batches
        self._primed: Iterator[Any] | None = None
        self._kept: list[Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self._kept is not None:
            return (_shallow_copy(b) for b in self._kept)
        it = self._iter_then_prime() if self.prime_next else super().__iter__()
        return self._iter_and_keep(it) if self.keep_batches else it

    def _iter_and_keep(self, it: Iterator[Any]) -> Iterator[Any]:
        kept = []
        for b in it:
            kept.append(b)
            yield _shallow_copy(b)
        self._kept = kept  # only after exhaustion: an abandoned pass keeps nothing

    def _iter_then_prime(self) -> Iterator[Any]:
        it, self._primed = self._primed or super().__iter__(), None
        yield from it
        # only after exhaustion: an abandoned pass is reset by the next iter()
        self._primed = super().__iter__()

    def set_epoch(self, epoch: int) -> None:
        self._primed = None  # the next iter() resets the workers and hands out this epoch's indices
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        elif isinstance(self.sampler, RandomSampler) and self.sampler.generator is not None:
            self.sampler.generator.manual_seed(_derive_seed(self.seed, epoch))
        if self.generator is not None:
            self.generator.manual_seed(_derive_seed(self.seed, epoch, 1))


def _shallow_copy(batch: Any) -> Any:
    """A copy of a batch dict and of its dict values (``seg_masks``), sharing the tensors and lists."""
    if not isinstance(batch, dict):
        return batch
    return {k: dict(v) if isinstance(v, dict) else v for k, v in batch.items()}


def build_dataloader(
    spec: DataSpec,
    split: str,
    *,
    imgsz: int,
    batch: int,
    workers: int,
    augment: bool,
    shuffle: bool,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    params: AugmentParams | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = True,
    prefetch_factor: int = 2,
    ground_truth: bool = False,
    prime_next: bool = False,
    cache: str = "off",
) -> MtkdDataLoader:
    """Seeded loader of ``split`` yielding ``collate`` batches; ``DistributedSampler`` when ``distributed``.

    ``pin_memory``: page-locked batches for faster, asynchronous copies to a GPU (pass ``True`` when training
    on CUDA). ``persistent_workers`` (only with ``workers > 0``): keep the worker processes between epochs.
    ``prefetch_factor``: batches each worker prepares ahead (only with ``workers > 0``). ``ground_truth``:
    batches carry ``ground_truth``, the original-resolution annotations read by the workers (for evaluation
    loaders: ``mtkd.eval.batch.SourceIndex.attach`` uses them instead of reading the files again).
    ``prime_next``: prepare the next pass's first batches as soon as a pass ends (``MtkdDataLoader``; only with
    persistent workers and batches that do not depend on the epoch: evaluation loaders). ``cache``: keep the
    split in memory between passes, ``"auto"``, ``"ram"`` or ``"off"`` (``mtkd.data.item_cache``; never for an
    augmenting split); the decision is logged. Without ``pin_memory`` or shuffling the collated batches are kept
    in this process and replayed (``MtkdDataLoader.keep_batches``: an evaluation pass on the 2-core CPU 12% faster
    than from the workers' item cache); with it (CUDA) each worker keeps the items it prepared and the batches
    are collated and pinned every pass, so no page-locked memory is held between passes.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch: expected a positive integer, got {batch!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers: expected an integer >= 0, got {workers!r}")
    if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) or prefetch_factor < 1:
        raise ConfigError(f"prefetch_factor: expected a positive integer, got {prefetch_factor!r}")
    dataset = build_dataset(
        spec, split, imgsz=imgsz, augment=augment, seed=seed, params=params, ground_truth=ground_truth
    )
    keep_batches = False
    if cache != "off":
        keep, why = cache_decision(dataset, cache)
        keep_batches = keep and not pin_memory and not shuffle  # shuffled: the items repeat, not the batches
        dataset.keep_items = keep and not keep_batches
        where = (
            ": the collated batches, in the main process" if keep_batches else ": the items, in the workers"
        )
        log.info("%s split of %s: %s", split, spec.yaml_path, why + (where if keep else ""))
    if distributed:
        sampler: Any = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(_derive_seed(seed, 0)))
    else:
        sampler = SequentialSampler(dataset)
    return MtkdDataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        seed=seed,
        generator=torch.Generator().manual_seed(_derive_seed(seed, 0, 1)),
        pin_memory=bool(pin_memory),
        persistent_workers=bool(persistent_workers) and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        prime_next=prime_next,
        keep_batches=keep_batches,
    )
