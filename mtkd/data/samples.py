"""What one raw sample is, how its files are read, and the per-file checks shared by readers and the validator.

Every check returns ``Problem`` objects instead of raising, so ``tools/check_dataset.py`` can list every
problem while the training-time readers raise the first one as a ``SampleError`` (a ``DatasetError``): the
same rule, one implementation, and the same message either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtkd.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BOX_EPS = 1e-3  # boxes may exceed the image by this fraction of its size (rounding in label tools); clipped


@dataclass(frozen=True)
class Problem:
    """One problem in one file: ``path[:line]: message`` (``line`` is 1-based; ``None`` when not a text line)."""

    path: Path
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


class SampleError(DatasetError):
    """A sample cannot be read. Survives DataLoader worker processes as the same one-line message.

    PyTorch re-raises a worker's exception as ``type(e)("Caught ... Original Traceback ...")``; the
    constructor recognises that form and keeps only the original message, so the CLI still prints one line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip().splitlines()[0]
        super().__init__(message)


def raise_first(problems: list[Problem]) -> None:
    """Raise ``SampleError`` for the first problem (and say how many more there are); no-op when empty."""
    if problems:
        more = (
            f" (and {len(problems) - 1} more problem(s); run tools/check_dataset.py)"
            if len(problems) > 1
            else ""
        )
        raise SampleError(f"{problems[0]}{more}")


@dataclass
class RawSample:
    """One sample as stored on disk, before any transform.

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB.
        mask: uint8 ``[H, W]`` seg class ids, ``ignore_index`` where unlabeled.
        boxes: float32 ``[n, 4]`` xyxy in pixels of ``image``, clipped to the image.
        labels: int64 ``[n]`` det class ids.
        path: the image file.
    """

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    path: Path


def _pil_open(path: Path):
    """``PIL.Image.open`` without Ultralytics' process-wide patch: once Ultralytics is imported, its patched
    ``Image.open`` answers an unidentifiable file by trying to load (or install) the ``pi-heif`` plugin."""
    import sys

    from PIL import Image

    open_ = Image.open
    module = getattr(open_, "__module__", "") or ""
    if module.startswith("ultralytics"):
        open_ = getattr(sys.modules.get(module), "_image_open", open_)
    return open_(path)


def read_image(path: Path) -> tuple[np.ndarray | None, list[Problem]]:
    """Decode an image file to uint8 ``[H, W, 3]`` RGB; ``(None, [problem])`` when missing or unreadable."""
    from PIL import UnidentifiedImageError

    if not path.is_file():
        return None, [Problem(path, "image file is missing")]
    try:
        with _pil_open(path) as im:
            return np.asarray(im.convert("RGB")), []
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ImportError) as e:
        return None, [Problem(path, f"image is unreadable ({type(e).__name__}: {e})")]


def read_mask(path: Path) -> tuple[np.ndarray | None, list[Problem]]:
    """Decode a single-channel (PIL mode ``L`` or ``P``) PNG to uint8 ``[H, W]`` class ids."""
    from PIL import UnidentifiedImageError

    if not path.is_file():
        return None, [Problem(path, "mask file is missing")]
    try:
        with _pil_open(path) as im:
            if im.mode not in ("L", "P"):
                return None, [
                    Problem(
                        path,
                        f"mask must be a single-channel 8-bit PNG (mode L or P) of class "
                        f"ids, got mode {im.mode}",
                    )
                ]
            return np.asarray(im), []
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ImportError) as e:
        return None, [Problem(path, f"mask is unreadable ({type(e).__name__}: {e})")]


def mask_problems(
    mask: np.ndarray, path: Path, image_hw: tuple[int, int] | None, num_seg: int, ignore_index: int
) -> list[Problem]:
    """Size must match the image's; every value must be a seg class id (``< num_seg``) or ``ignore_index``."""
    problems = []
    if image_hw is not None and tuple(mask.shape[:2]) != tuple(image_hw):
        problems.append(
            Problem(
                path,
                f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match its "
                f"image {image_hw[1]}x{image_hw[0]}",
            )
        )
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts) if v >= num_seg and v != ignore_index]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        problems.append(
            Problem(
                path,
                f"mask values {{{shown}}} are neither seg classes 0..{num_seg - 1} nor "
                f"ignore_index {ignore_index}",
            )
        )
    return problems


def box_problem(xyxy: tuple[float, float, float, float], width: int, height: int) -> str | None:
    """Why a pixel xyxy box is invalid for a ``width x height`` image (``None`` when valid)."""
    x1, y1, x2, y2 = xyxy
    if not all(np.isfinite(v) for v in xyxy):
        return f"box has a non-finite coordinate {list(xyxy)}"
    if x2 <= x1 or y2 <= y1:
        return f"box has zero or negative area (xyxy {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f})"
    ex, ey = BOX_EPS * width, BOX_EPS * height
    if x1 < -ex or y1 < -ey or x2 > width + ex or y2 > height + ey:
        return f"box (xyxy {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}) lies outside the {width}x{height} image"
    return None


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip float ``[n, 4]`` xyxy boxes to the image (they are already validated to be inside up to BOX_EPS)."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out
