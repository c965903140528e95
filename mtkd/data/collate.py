"""Batch dataset items with variable box counts (DESIGN.md §2 batch contract)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and masks, concatenate boxes with a per-box image index.

    Returns:
        ``images`` float32 ``[B, 3, H, W]``, ``masks`` int64 ``[B, H, W]`` (single-task items) or ``seg_masks``
        ``{task: int64 [B, H, W]}`` (``seg_tasks`` items; ``batch_masks`` gives either as a dict),
        ``boxes`` float32 ``[N, 4]`` xyxy pixels,
        ``labels`` int64 ``[N]``, ``batch_idx`` int64 ``[N]`` (image of each box), ``paths`` list[str],
        ``orig_sizes`` list[(H0, W0)], ``pads`` list[(top, left)], ``scales`` list[float]; and
        ``ground_truth`` (list of ``GroundTruth``) when the items carry it.
    """
    import torch
    from torch.utils.data import default_collate

    if not items:
        raise ValueError("collate() needs at least one item")
    counts = [int(it["boxes"].shape[0]) for it in items]
    return {
        # default_collate stacks like torch.stack, but in a worker process straight into shared memory (the
        # batch would otherwise be copied there to reach the main process)
        "images": default_collate([it["image"] for it in items]),
        **_masks(items, default_collate),
        "boxes": torch.cat([it["boxes"].reshape(-1, 4) for it in items]).float(),
        "labels": torch.cat([it["labels"].reshape(-1) for it in items]).long(),
        "batch_idx": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
        "paths": [it["path"] for it in items],
        "orig_sizes": [tuple(it["orig_size"]) for it in items],
        "pads": [tuple(it["pad"]) for it in items],
        "scales": [float(it["scale"]) for it in items],
        **({"ground_truth": [it["ground_truth"] for it in items]} if "ground_truth" in items[0] else {}),
    }


def _masks(items: Sequence[dict[str, Any]], stack: Any) -> dict[str, Any]:
    if "mask" in items[0]:
        return {"masks": stack([it["mask"] for it in items])}
    return {"seg_masks": {t: stack([it["masks"][t] for it in items]) for t in items[0]["masks"]}}


def batch_masks(batch: dict[str, Any]) -> dict[str, Any]:
    """Seg task -> int64 ``[B, H, W]`` masks of a batch: ``{"seg": batch["masks"]}`` for a single-task batch."""
    return batch["seg_masks"] if "seg_masks" in batch else {"seg": batch["masks"]}
