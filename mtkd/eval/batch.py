"""What the evaluators read from a batch: the letterbox of each image and its ground truth in original pixels.

The loader yields letterboxed images ``[B, 3, S, S]``. Ground truth is compared at the **original** resolution:
read from the dataset files (``dataset.source[i]``: image, mask, boxes, labels as stored) when the dataset
exposes a raw source, else the batch's boxes mapped back (``(x - left) / scale``, clipped) and its masks used
at input resolution. The driver attaches the raw samples to the batch (``SourceIndex.attach``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtkd.data.collate import images_to_float


@dataclass(frozen=True)
class Letterbox:
    """Letterbox of one image: original size, padding ``(top, left)`` and scale (input = original * scale)."""

    h0: int
    w0: int
    top: int
    left: int
    scale: float

    @classmethod
    def from_batch(cls, batch: dict[str, Any], i: int) -> Letterbox:
        h0, w0 = (int(v) for v in batch["orig_sizes"][i])
        top, left = (round(float(v)) for v in batch["pads"][i])
        return cls(h0, w0, top, left, float(batch["scales"][i]))

    def boxes_to_original(self, b: Tensor) -> Tensor:
        """``[N, 4]`` xyxy input pixels → original pixels, clipped to the image."""
        out = (b.float() - b.new_tensor([self.left, self.top, self.left, self.top]).float()) / self.scale
        out[:, 0::2] = out[:, 0::2].clamp(0, self.w0)
        out[:, 1::2] = out[:, 1::2].clamp(0, self.h0)
        return out

    def crop(self, x: Tensor) -> Tensor:
        """The un-padded region ``[..., nh, nw]`` of an input-resolution map ``[..., S, S]``."""
        nh, nw = max(1, round(self.h0 * self.scale)), max(1, round(self.w0 * self.scale))
        return x[..., self.top : self.top + nh, self.left : self.left + nw]

    def seg_to_original(self, logits: Tensor, hw: tuple[int, int]) -> Tensor:
        """``[C, h, w]`` logits of the letterboxed input ``hw`` → ``[H0, W0]`` int64 class map."""
        return seg_to_original(logits[None], hw, [self])[0]


def seg_to_original(logits: Tensor, hw: tuple[int, int], letterboxes: Sequence[Letterbox]) -> list[Tensor]:
    """Class maps at original resolution of a batch, on the logits' device.

    Per image: the logits resized bilinearly to the input size ``hw`` (when their size differs), the letterbox
    padding cropped, the rest resized bilinearly to ``(H0, W0)`` (when its size differs), argmax over classes.
    Images with equal letterboxes (all of them, for a dataset of one image size) go through each step together.

    Args:
        logits: ``[B, C, h, w]`` segmentation logits.
        hw: ``(S, S)`` letterboxed input size.
        letterboxes: the ``B`` letterboxes.

    Returns:
        ``B`` int64 class maps ``[H0_i, W0_i]``.
    """
    from mtkd.models.postprocess import class_map

    groups: dict[Letterbox, list[int]] = {}
    for i, lb in enumerate(letterboxes):
        groups.setdefault(lb, []).append(i)
    out: list[Tensor] = [logits.new_zeros(0)] * len(letterboxes)
    for lb, idx in groups.items():
        x = logits if len(idx) == len(logits) else logits[torch.as_tensor(idx, device=logits.device)]
        x = x.float()
        if tuple(x.shape[-2:]) != tuple(hw):
            x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)
        x = lb.crop(x)
        if tuple(x.shape[-2:]) != (lb.h0, lb.w0):  # same size: bilinear resizing is the identity
            x = F.interpolate(x, size=(lb.h0, lb.w0), mode="bilinear", align_corners=False)
        for i, m in zip(idx, class_map(x)):
            out[i] = m
    return out


class SourceIndex:
    """Original-resolution samples by image path, from ``dataset.source`` (``paths`` and ``[i]`` → sample with
    ``image``, ``mask``, ``boxes``, ``labels``) when the dataset has one."""

    def __init__(self, dataset: Any) -> None:
        src = getattr(dataset, "source", None)
        paths = getattr(src, "paths", None) if src is not None else None
        self.src = src if paths is not None else None
        self.index = {str(p): i for i, p in enumerate(paths or [])}

    @property
    def available(self) -> bool:
        """Whether ground truth is read at original resolution (``data.seg_resolution`` = ``"original"``)."""
        return self.src is not None

    def get(self, path: str) -> Any | None:
        i = self.index.get(str(path)) if self.src is not None else None
        return None if i is None else self.src[i]

    def attach(self, batch: dict[str, Any], n_real: int) -> dict[str, Any]:
        """A shallow copy of ``batch`` with ``n_real`` and ``source``: for each of the first ``n_real`` images
        its original-resolution ground truth (``None`` otherwise or when unavailable) — the batch's
        ``ground_truth`` (read by the loader's workers with the image) when it has one, else the raw sample
        read here, once per batch."""
        given = batch.get("ground_truth") if self.src is not None else None
        read = given.__getitem__ if given is not None else lambda i: self.get(str(batch["paths"][i]))
        return {
            **batch,
            "n_real": n_real,
            "source": [read(i) if i < n_real else None for i in range(len(batch["paths"]))],
        }


def real_count(loader: Any, rank: int, world: int) -> int | None:
    """Non-padding samples of this rank under a ``DistributedSampler`` (which repeats samples so the split
    divides by the world size; the repeats sit at the end of each rank's share); ``None`` if not sharded."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if world <= 1 or not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    return len(range(rank, len(loader.dataset), world))


def target(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """Detection ground truth of image ``i`` in original pixels: ``{"boxes": [M, 4] xyxy, "labels": int64 [M],
    "image_size": (H0, W0), "path"}``, from the files when ``batch["source"][i]`` is set, else the batch's
    boxes mapped back."""
    lb, raw = Letterbox.from_batch(batch, i), batch["source"][i]
    if raw is not None:
        boxes, labels = torch.as_tensor(np.asarray(raw.boxes, dtype=np.float64)).reshape(-1, 4), raw.labels
    else:
        sel = batch["batch_idx"] == i
        boxes, labels = lb.boxes_to_original(batch["boxes"][sel]), batch["labels"][sel]
    return {
        "boxes": boxes,
        "labels": torch.as_tensor(np.asarray(labels)).long(),
        "image_size": (lb.h0, lb.w0),
        "path": str(batch["paths"][i]),
    }


def original_sample(
    batch: dict[str, Any], i: int, task: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image ``i`` and its ground truth at original resolution, as numpy: ``image`` uint8 ``[H0, W0, 3]``,
    ``mask`` ``[H0, W0]`` (of seg task ``task`` of a several-task dataset; ``None``: the single task), ``boxes``
    ``[M, 4]`` xyxy, ``labels`` ``[M]``. Without a raw source the letterbox padding of the batch is cropped and
    the rest resized back (bilinear image, nearest mask)."""
    raw = batch["source"][i]
    if raw is not None:
        return raw.image, raw.mask if task is None else raw.masks[task], raw.boxes, raw.labels
    lb = Letterbox.from_batch(batch, i)
    img = F.interpolate(
        lb.crop(images_to_float(batch["images"][i]))[None], size=(lb.h0, lb.w0), mode="bilinear"
    )[0]
    image = (img.permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
    m = lb.crop(batch["masks"][i] if task is None else batch["seg_masks"][task][i])[None, None].float()
    mask = F.interpolate(m, size=(lb.h0, lb.w0), mode="nearest")[0, 0].long().cpu().numpy()
    sel = batch["batch_idx"] == i
    return image, mask, lb.boxes_to_original(batch["boxes"][sel]).numpy(), batch["labels"][sel].numpy()
