"""Batch dataset items with variable box counts (DESIGN.md §2 batch contract)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and masks, concatenate boxes with a per-box image index.

    Returns:
        ``images`` uint8 ``[B, 3, H, W]`` (0-255), ``masks`` uint8 ``[B, H, W]`` (single-task items) or
        ``seg_masks`` ``{task: uint8 [B, H, W]}`` (``seg_tasks`` items; ``batch_masks`` gives either as a dict);
        ``batch_to_device`` moves a batch and makes images float32 in [0, 1] and masks int64;
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


def images_to_float(images: Any) -> Any:
    """Loader images (uint8 ``[B, 3, H, W]`` or ``[3, H, W]``, 0-255) as float32 in [0, 1] where they are (do it
    after the copy to the device: a quarter of the bytes travel); a floating-point tensor is returned as it is."""
    import torch

    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def batch_to_device(
    batch: dict[str, Any], device: Any, *, channels_last: bool = False, non_blocking: bool = True
) -> dict[str, Any]:
    """A shallow copy of ``batch`` with every tensor (and ``seg_masks``' tensors) moved to ``device`` once
    (``non_blocking``: asynchronous from pinned memory), then ``images`` float32 ``[B, 3, H, W]`` in [0, 1]
    (``channels_last`` memory format when asked) and masks int64 ``[B, H, W]``, what models and losses take."""
    import torch

    out = dict(batch)
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=non_blocking)
        elif isinstance(v, dict):  # seg_masks: {task: [B, H, W]}
            out[k] = {
                t: m.to(device, non_blocking=non_blocking).long() if isinstance(m, torch.Tensor) else m
                for t, m in v.items()
            }
    if "images" in out:
        images = images_to_float(out["images"])
        out["images"] = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    if "masks" in out:
        out["masks"] = out["masks"].long()
    return out


def batch_masks(batch: dict[str, Any]) -> dict[str, Any]:
    """Seg task -> ``[B, H, W]`` masks of a batch (int64 after ``batch_to_device``): ``{"seg": batch["masks"]}``
    for a single-task batch."""
    return batch["seg_masks"] if "seg_masks" in batch else {"seg": batch["masks"]}
