"""Joint image / mask / box transforms (albumentations) producing one dataset item (docs/INTERFACES.md "Data").

- Validation (``augment=False``): letterbox to ``imgsz x imgsz``: resize the long side to ``imgsz`` keeping the
  aspect ratio, pad centred with grey 114 (image) and ``ignore_index`` (mask). ``scale`` and ``pad`` map a
  prediction back to the original image: ``x0 = (x - left) / scale``, ``y0 = (y - top) / scale`` (the short
  side is rounded to whole pixels, so this is exact to half a pixel).
- Training (``augment=True``): resize the long side to a random ``scale * imgsz`` (one interpolation), pad
  (at a random position) and random-crop back to ``imgsz``, horizontal flip, colour jitter. Boxes follow every
  geometric op (``pascal_voc``, clipped to the crop); a box keeping less than ``min_visibility`` of its area
  or less than ``min_area`` px² is dropped with its label (its mask pixels stay: the mask is the ground truth
  of the segmentation task). Masks use centre-sampled nearest-neighbour interpolation, so class ids are never
  blended and masks stay within a pixel of the boxes. A box clipped by the crop is the clipped box, which
  contains the object's visible pixels but may be looser than them (boxes carry no shape). No rotation: the
  box of a rotated box is not the box of the rotated object.

Randomness comes only from a per-call seed (``transform(raw, seed=k)``), so an item is a pure function of
(sample, seed) whatever the worker process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtkd.config import AugConfig
from mtkd.data.samples import RawSample

PAD_VALUE = 114  # grey letterbox padding (114/255), as in YOLO


#: Training augmentation strengths: the typed ``aug`` section of the training config (fields and defaults there).
AugmentParams = AugConfig


def letterbox_geometry(h0: int, w0: int, imgsz: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """``(scale, (top, left), (new_h, new_w))`` of the letterbox of an ``h0 x w0`` image into ``imgsz``.

    Matches albumentations ``LongestMaxSize`` (rounded sides) + ``PadIfNeeded(position="center")``.
    """
    scale = imgsz / max(h0, w0)
    nh, nw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    return scale, ((imgsz - nh) // 2, (imgsz - nw) // 2), (nh, nw)


def build_compose(
    imgsz: int, *, augment: bool, ignore_index: int, params: AugmentParams | None = None
) -> Any:
    """The albumentations pipeline (an ``A.Compose`` taking ``image``, ``mask``, ``bboxes``, ``labels``).

    Sets ``NO_ALBUMENTATIONS_UPDATE=1`` (unless the user set it) before albumentations is first imported: its
    import otherwise queries PyPI for a newer version, and mtkd never uses the network.
    """
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    p = params or AugmentParams()
    pad = dict(border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, fill_mask=ignore_index)
    # INTER_NEAREST_EXACT samples pixel centres; plain INTER_NEAREST shifts masks by up to half a pixel per resize
    interp = dict(interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST_EXACT)
    if augment:
        # one resize to a random long side in scale * imgsz (the letterbox resize and the random scale fused,
        # so the mask is interpolated once and stays within half a pixel of the boxes)
        sizes = list(range(max(1, round(imgsz * p.scale[0])), round(imgsz * p.scale[1]) + 1))
        ops: list[Any] = [
            A.LongestMaxSize(max_size=sizes, **interp),
            A.PadIfNeeded(min_height=imgsz, min_width=imgsz, position="random", **pad),
            A.RandomCrop(height=imgsz, width=imgsz),
            A.HorizontalFlip(p=p.hflip),
            A.ColorJitter(
                brightness=p.brightness, contrast=p.contrast, saturation=p.saturation, hue=p.hue, p=p.jitter_p
            ),
        ]
        bbox = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            clip=True,
            min_visibility=p.min_visibility,
            min_area=p.min_area,
        )
    else:
        ops = [
            A.LongestMaxSize(max_size=imgsz, **interp),
            A.PadIfNeeded(min_height=imgsz, min_width=imgsz, position="center", **pad),
        ]
        bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True)
    return A.Compose(ops, bbox_params=bbox, seed=0)


class JointTransform:
    """Turn a ``RawSample`` into a dataset item (tensors), letterboxed or augmented.

    Item: ``image`` uint8 ``[3, S, S]`` (0-255: a quarter of float32's bytes through the workers' shared memory,
    pinned memory and the host-to-device copy; ``mtkd.data.collate.batch_to_device`` makes it float32 in [0, 1]
    on the device); ``mask`` uint8 ``[S, S]`` class ids (a single-task sample) or ``masks`` ``{task: uint8 [S,
    S]}`` (a ``seg_tasks`` sample), int64 after ``batch_to_device``; ``boxes`` float32 ``[n, 4]`` xyxy
    pixels of the output; ``labels`` int64 ``[n]``; ``path`` str; ``orig_size`` ``(H0, W0)``; ``pad``
    ``(top, left)`` and ``scale`` (letterbox geometry; with ``augment=True`` they describe only the initial
    resize, not the random scale/crop, and cannot map predictions back).
    """

    def __init__(
        self, imgsz: int, *, augment: bool, ignore_index: int = 255, params: AugmentParams | None = None
    ) -> None:
        self.imgsz, self.augment, self.ignore_index = imgsz, augment, ignore_index
        self.compose = build_compose(imgsz, augment=augment, ignore_index=ignore_index, params=params)

    def __call__(self, raw: RawSample, *, seed: int = 0) -> dict[str, Any]:
        import torch

        h0, w0 = raw.image.shape[:2]
        scale, pad, _ = letterbox_geometry(h0, w0, self.imgsz)
        single = list(raw.masks) == ["seg"]
        if (
            not self.augment
        ):  # the same letterbox without albumentations' per-call bookkeeping (most of its cost)
            out = letterbox(raw, self.imgsz, self.ignore_index)
        elif single:
            self.compose.set_random_seed(seed)
            out = self.compose(image=raw.image, mask=raw.masks["seg"], bboxes=raw.boxes, labels=raw.labels)
            out["masks"] = [out["mask"]]
        else:  # every task's mask through the same geometric ops (albumentations' ``masks``)
            self.compose.set_random_seed(seed)
            out = self.compose(
                image=raw.image, masks=list(raw.masks.values()), bboxes=raw.boxes, labels=raw.labels
            )
        # np.array copies: the item owns its masks
        ts = [torch.from_numpy(np.array(m, dtype=np.uint8)) for m in out["masks"]]
        masks = {"mask": ts[0]} if single else {"masks": dict(zip(raw.masks, ts))}
        image = np.ascontiguousarray(out["image"].transpose(2, 0, 1))
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        return {
            "image": torch.from_numpy(image),
            **masks,
            "boxes": torch.from_numpy(boxes),
            "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1)),
            "path": str(raw.path),
            "orig_size": (int(h0), int(w0)),
            "pad": pad,
            "scale": float(scale),
        }


def letterbox(raw: RawSample, imgsz: int, ignore_index: int) -> dict[str, Any]:
    """The validation letterbox (``build_compose(augment=False)``: ``LongestMaxSize`` + centred ``PadIfNeeded``
    with boxes clipped to the output) done directly with OpenCV: ``{"image": uint8 [S, S, 3], "masks": [uint8
    [S, S] per task], "bboxes": float [n, 4] xyxy, "labels": [n]}``. Same pixels (the same ``cv2.resize`` and
    constant padding); boxes equal to albumentations' to float rounding, a box left without area dropped as it
    drops it."""
    import cv2

    h0, w0 = raw.image.shape[:2]
    _, (top, left), (nh, nw) = letterbox_geometry(h0, w0, imgsz)
    bottom, right = imgsz - nh - top, imgsz - nw - left

    def fit(a: np.ndarray, interpolation: int, fill: int) -> np.ndarray:
        if (nh, nw) != (h0, w0):
            a = cv2.resize(a, (nw, nh), interpolation=interpolation)
        if top or bottom or left or right:
            value = (fill,) * (a.shape[2] if a.ndim == 3 else 1)
            a = cv2.copyMakeBorder(a, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
        return a

    boxes = np.asarray(raw.boxes, np.float64).reshape(-1, 4)
    boxes = boxes * np.array([nw / w0, nh / h0, nw / w0, nh / h0]) + np.array([left, top, left, top])
    boxes = np.clip(boxes, 0, imgsz)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {
        "image": fit(raw.image, cv2.INTER_LINEAR, PAD_VALUE),
        "masks": [fit(m, cv2.INTER_NEAREST_EXACT, ignore_index) for m in raw.masks.values()],
        "bboxes": boxes[keep],
        "labels": np.asarray(raw.labels).reshape(-1)[keep],
    }
