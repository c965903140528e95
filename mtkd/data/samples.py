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


class _SingleMask:
    """``mask``: the mask of a single-task sample (for dataclasses with ``masks`` and ``path``)."""

    masks: dict[str, np.ndarray]
    path: Path

    @property
    def mask(self) -> np.ndarray:
        """The mask of a single-task sample (``ValueError`` for a sample with several tasks: use ``masks``)."""
        if len(self.masks) != 1:
            raise ValueError(
                f"{self.path}: the sample has seg tasks {', '.join(self.masks)}; use .masks[task]"
            )
        return next(iter(self.masks.values()))


@dataclass
class RawSample(_SingleMask):
    """One sample as stored on disk, before any transform.

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB.
        masks: seg task -> uint8 ``[H, W]`` class ids, ``ignore_index`` where unlabeled (``{"seg": mask}`` for a
            single-task dataset), in the descriptor's task order.
        boxes: float32 ``[n, 4]`` xyxy in pixels of ``image``, clipped to the image.
        labels: int64 ``[n]`` det class ids.
        path: the image file.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    boxes: np.ndarray
    labels: np.ndarray
    path: Path

    def ground_truth(self) -> GroundTruth:
        """The annotations without the pixels (what evaluation compares against; shares the arrays)."""
        return GroundTruth(self.masks, self.boxes, self.labels, self.path)


@dataclass
class GroundTruth(_SingleMask):
    """A sample's annotations at original resolution without its pixels: what a val loader's workers hand to
    evaluation next to the letterboxed image, so the main process does not decode the files a second time.

    Attributes:
        masks: seg task -> uint8 ``[H0, W0]`` class ids (``ignore_index`` where unlabeled).
        boxes: float32 ``[n, 4]`` xyxy original pixels.
        labels: int64 ``[n]`` det class ids.
        path: the image file.
    """

    masks: dict[str, np.ndarray]
    boxes: np.ndarray
    labels: np.ndarray
    path: Path

    @property
    def image(self) -> np.ndarray:
        """uint8 ``[H0, W0, 3]`` RGB, decoded from ``path`` on each access (overlays read a few; evaluation
        itself never does); ``SampleError`` naming the file when it no longer reads."""
        pixels, problems = read_image(Path(self.path))
        raise_first(problems)
        assert pixels is not None
        return pixels


def pil_open(path: Path):
    """``PIL.Image.open`` without Ultralytics' process-wide patch: once Ultralytics is imported, its patched
    ``Image.open`` answers an unidentifiable file by trying to load (or install) the ``pi-heif`` plugin."""
    import sys

    from PIL import Image

    open_ = Image.open
    module = getattr(open_, "__module__", "") or ""
    if module.startswith("ultralytics"):
        open_ = getattr(sys.modules.get(module), "_image_open", open_)
    return open_(path)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL modes of 16-bit greyscale


def _is_16bit(im) -> bool:
    """16-bit greyscale: mode ``I;16*``, or ``I`` from a PNG (older Pillow reads 16-bit grey PNGs as ``I``)."""
    return im.mode in _SIXTEEN_BIT or (im.mode == "I" and im.format == "PNG")


def _read_pil(path: Path, what: str, to_array) -> tuple[np.ndarray | None, list[Problem]]:
    """Open ``path`` and return ``to_array(im)`` (an array, or a ``str`` saying why the content is refused).

    A missing, undecodable or too large file (over ``PIL.Image.MAX_IMAGE_PIXELS``, PIL's decompression-bomb
    guard, whether PIL would warn or raise) is a problem of ``path``, never an exception.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return None, [Problem(path, f"{what} file is missing")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with pil_open(path) as im:
                out = to_array(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, [Problem(path, f"{what} is over PIL's pixel limit (Image.MAX_IMAGE_PIXELS): {e}")]
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ImportError) as e:
        return None, [Problem(path, f"{what} is unreadable ({type(e).__name__}: {e})")]
    return (None, [Problem(path, out)]) if isinstance(out, str) else (out, [])


def _image_rgb(im) -> np.ndarray | str:
    if _is_16bit(im):  # keep relative intensity: the top 8 of 16 bits (convert("RGB") would clip to white)
        grey = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("I", "F"):
        return f"image mode {im.mode} (32-bit) is not supported; save it as an 8- or 16-bit image"
    return np.asarray(im.convert("RGB"))


def _mask_ids(im) -> np.ndarray | str:
    if im.mode in ("L", "P"):
        return np.asarray(im)
    if im.mode in ("I", *_SIXTEEN_BIT):  # integer masks are fine while every value fits a uint8 class id
        ids = np.asarray(im)
        lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        if lo >= 0 and hi <= 255:
            return ids.astype(np.uint8)
        return f"mask values {lo}..{hi} (mode {im.mode}) do not fit class ids 0..255"
    return f"mask must be a single-channel 8-bit PNG (mode L or P) of class ids, got mode {im.mode}"


def read_image(path: Path) -> tuple[np.ndarray | None, list[Problem]]:
    """Decode an image file to uint8 ``[H, W, 3]`` RGB; ``(None, [problem])`` when missing or unreadable.

    16-bit greyscale keeps its relative intensity (value >> 8; PIL itself reduces 16-bit RGB(A) PNGs the same
    way); 32-bit (mode ``I`` / ``F``) images are refused, as there is no bit depth to scale them by.
    """
    return _read_pil(path, "image", _image_rgb)


def read_mask(path: Path) -> tuple[np.ndarray | None, list[Problem]]:
    """Decode a single-channel PNG to uint8 ``[H, W]`` class ids: mode ``L`` or ``P``, or a 16/32-bit integer
    mask whose values all lie in 0..255 (larger values are refused, never wrapped)."""
    return _read_pil(path, "mask", _mask_ids)


_JPEG_MAGIC, _PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


def cv2_read(path: Path, *, mask: bool = False) -> np.ndarray | None:
    """Decode a JPEG or PNG with OpenCV: uint8 ``[H, W, 3]`` RGB, or with ``mask`` the single channel as stored
    (``[H, W]``); ``None`` for anything else, or when OpenCV cannot decode it.

    Not a validator: OpenCV decodes some files PIL refuses (a truncated JPEG comes back grey-filled), and ignores
    what PIL converts (EXIF orientation is ignored on purpose, as PIL ignores it). Callers use it only for files
    whose ``cv2_read`` output was compared equal to ``read_image`` / ``read_mask`` (``mtkd.data.index``).
    """
    import cv2

    try:
        buf = np.fromfile(path, np.uint8)
    except (OSError, ValueError):
        return None
    head = buf[:8].tobytes()
    if not (head.startswith(_JPEG_MAGIC) or head == _PNG_MAGIC):
        return None
    if mask:
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return out if out is not None and out.ndim == 2 and out.dtype == np.uint8 else None
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB
    out = cv2.imdecode(buf, (cv2.IMREAD_COLOR if rgb is None else rgb) | cv2.IMREAD_IGNORE_ORIENTATION)
    if out is None or out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8:
        return None
    return np.ascontiguousarray(out[..., ::-1]) if rgb is None else out


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
