"""The sample index of a split: every sample validated once, the result cached next to the data.

A reader (``yolo_mask``, ``coco``) indexes its split when it is constructed: each sample is read and checked
by the reader's own ``load_sample`` (the checks ``tools/check_dataset.py`` applies), and the index keeps, per
sample, whether it passed, its image size, its boxes and labels, and whether OpenCV decodes its image (mask) to
exactly PIL's pixels (ids), compared on that very file. ``__getitem__`` then only decodes the image and mask
(with OpenCV where the index says the pixels are identical) and takes the boxes from the index. A sample with
problems, or whose files disagree with the index, is read the validating way, which raises its first problem
exactly as before.

Cache file (yolo_mask: ``<root>/labels/<split folder>.mtkd.npz``; coco: the annotations file with the suffix
``.mtkd.npz`` instead of ``.json``): an uncompressed numpy ``.npz``, read with ``allow_pickle=False``:

- ``meta``: 0-d str, JSON ``{"kind": "mtkd-sample-index", "version": 1, "key": ..., "digest": ...}``;
- per sample: ``names`` str ``[N]`` (image file names, reader order); ``keys`` bytes ``[N]``; ``state`` uint8
  ``[N]`` (0 valid, 1 has problems, 2 not trusted yet); ``hw`` int32 ``[N, 2]`` (image height, width);
  ``fast`` uint8 ``[N]`` (bit 1: image, bit 2: every mask decoded identically by OpenCV); ``offsets`` int64
  ``[N + 1]`` (sample ``i`` owns ``boxes[offsets[i]:offsets[i + 1]]``); ``boxes`` float32 ``[M, 4]`` xyxy
  pixels; ``labels`` int64 ``[M]``.

Invalidation: ``meta["key"]`` is a SHA-256 of the index version, the mtkd, Pillow and OpenCV versions, PIL's
decoding limits, the class lists and ``ignore_index`` and the shared files (coco: the JSON); when it differs
the whole split is indexed again. ``keys[i]`` hashes sample ``i``'s name and the absolute path, size and mtime
(ns) of each of its files (image, mask, label; missing ones too): a sample whose key differs is indexed
again, the others are kept. A file modified less than ``RACY_S`` seconds before indexing is not trusted (a
second edit within the file system's timestamp resolution would not change its mtime; git's "racily clean"
entries): its sample is read the validating way until a later construction, when the file is old enough,
indexes it. An edit that keeps a file's size and mtime is not seen (as with Ultralytics' ``labels.cache``);
``tools/check_dataset.py`` never uses the cache. A cache that does not parse, whose ``digest`` does not match
its arrays, or whose arrays are inconsistent (a label out of range, a box outside its image, ...) is ignored
with a warning and rebuilt. A cache that cannot be written (read-only dataset folder) is not an error: the
index is kept in memory and that is said once per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtkd.data.descriptor import DataSpec
from mtkd.data.samples import BOX_EPS, Problem, RawSample, cv2_read, read_image, read_mask
from mtkd.errors import OutputError
from mtkd.utils.atomic import atomic_write
from mtkd.utils.log import get_logger

KIND, VERSION, SUFFIX = "mtkd-sample-index", 1, ".mtkd.npz"
VALID, PROBLEM, UNTRUSTED = 0, 1, 2
FAST_IMAGE, FAST_MASK = 1, 2
RACY_S = 3.0  # files younger than this (or dated in the future) are not trusted yet
ARRAYS = ("names", "keys", "state", "hw", "fast", "offsets", "boxes", "labels")
MAX_THREADS = 8

log = get_logger(__name__)
_told: set[str] = set()  # cache files whose write failure was already reported

Loader = Callable[[int], tuple["RawSample | None", "list[Problem]"]]
Entry = tuple[int, tuple[int, int], int, np.ndarray, np.ndarray]  # state, (h, w), fast, boxes, labels
_UNTRUSTED: Entry = (UNTRUSTED, (0, 0), 0, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))


@dataclass
class SampleIndex:
    """The per-sample arrays described in the module docstring."""

    names: np.ndarray
    keys: np.ndarray
    state: np.ndarray
    hw: np.ndarray
    fast: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray

    @classmethod
    def build(cls, names: Sequence[str], keys: np.ndarray, entries: Sequence[Entry]) -> SampleIndex:
        n = len(names)
        boxes = [
            np.zeros((0, 4), np.float32),
            *(np.asarray(e[3], np.float32).reshape(-1, 4) for e in entries),
        ]
        labels = [np.zeros(0, np.int64), *(np.asarray(e[4], np.int64).reshape(-1) for e in entries)]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum([len(lab) for lab in labels[1:]], out=offsets[1:])
        return cls(
            np.asarray(list(names), dtype=str).reshape(n),
            np.asarray(keys, dtype="S32").reshape(n),
            np.asarray([e[0] for e in entries], np.uint8).reshape(n),
            np.asarray([e[1] for e in entries], np.int32).reshape(n, 2),
            np.asarray([e[2] for e in entries], np.uint8).reshape(n),
            offsets,
            np.concatenate(boxes),
            np.concatenate(labels),
        )

    def entry(self, i: int) -> Entry:
        o0, o1 = self.offsets[i], self.offsets[i + 1]
        hw = (int(self.hw[i, 0]), int(self.hw[i, 1]))
        return int(self.state[i]), hw, int(self.fast[i]), self.boxes[o0:o1], self.labels[o0:o1]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ARRAYS}


def index_split(
    cache: Path,
    spec: DataSpec,
    names: Sequence[str],
    files: Sequence[tuple[Path, tuple[Path, ...], tuple[Path, ...]]],
    load: Loader,
    *,
    shared: Sequence[Path] = (),
    what: str = "split",
) -> SampleIndex:
    """Load the index of a split from ``cache``, index what is new, changed or not yet trusted, write it back.

    Args:
        cache: the cache file.
        names: one name per sample (its image file name), in the reader's order.
        files: per sample ``(image, its mask files (one per seg task; none when the reader makes the mask), the
            other files it is read from)``.
        load: ``load(i) -> (sample or None, problems)``, the reader's validating read of sample ``i``.
        shared: files every sample depends on (coco: the annotations JSON).
        what: the split, for messages.
    """
    horizon = time.time_ns() - int(RACY_S * 1e9)
    stats = [[_stat(p) for p in (image, *masks, *others)] for image, masks, others in files]
    shared_stats = [_stat(p) for p in shared]
    keys = np.asarray([_sample_key(n, st) for n, st in zip(names, stats)], dtype="S32")
    shared_racy = any(s[2] > horizon for s in shared_stats)
    racy = [shared_racy or any(s[2] > horizon for s in group) for group in stats]
    head = _head_key(spec, shared_stats)
    old = _read(cache, head, spec.nc_det)
    known = {} if old is None else {nk: j for j, nk in enumerate(zip(old.names.tolist(), old.keys.tolist()))}
    entries = [
        old.entry(known[(n, k)]) if old is not None and (n, k) in known else _UNTRUSTED
        for n, k in zip(names, keys.tolist())
    ]
    todo = [i for i, e in enumerate(entries) if e[0] == UNTRUSTED and not racy[i]]
    if todo:
        t0 = time.perf_counter()
        for i, e in zip(todo, _map(lambda i: _entry(load, files[i], i), todo)):
            entries[i] = e
        bad = sum(e[0] == PROBLEM for e in entries)
        log.info(
            f"indexed {len(todo)} sample(s) of {what} in {time.perf_counter() - t0:.1f}s"
            + (f"; samples with problems: {bad} (tools/check_dataset.py lists them)" if bad else "")
        )
    index = SampleIndex.build(names, keys, entries)
    if old is None or todo or not np.array_equal(old.keys, index.keys) or (old.state != index.state).any():
        _write(cache, index, head)
    return index


def read_indexed(
    index: SampleIndex,
    i: int,
    image: Path,
    masks: dict[str, Path] | None,
    make_mask: Callable[[], np.ndarray] | None = None,
) -> RawSample | None:
    """Sample ``i`` from its decoded files and the index; ``None`` when it is not valid in the index or its files
    disagree with it (the caller then reads it the validating way). ``masks``: seg task -> mask file;
    ``make_mask`` (the single task's mask) when ``masks`` is ``None``."""
    if index.state[i] != VALID:
        return None
    hw, fast = (int(index.hw[i, 0]), int(index.hw[i, 1])), int(index.fast[i])
    pixels = cv2_read(image) if fast & FAST_IMAGE else read_image(image)[0]
    if pixels is None or pixels.shape != (*hw, 3):
        return None
    if masks is None:
        decoded = {"seg": make_mask() if make_mask is not None else None}
    else:
        decoded = {
            t: cv2_read(p, mask=True) if fast & FAST_MASK else read_mask(p)[0] for t, p in masks.items()
        }
    if any(ids is None or ids.shape != hw for ids in decoded.values()):
        return None
    o0, o1 = index.offsets[i], index.offsets[i + 1]
    return RawSample(pixels, decoded, index.boxes[o0:o1].copy(), index.labels[o0:o1].copy(), image)


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return str(path), -1, -1
    return str(path), int(st.st_size), int(st.st_mtime_ns)


def _head_key(spec: DataSpec, shared: list) -> str:
    """What every entry depends on: versions, PIL's limits, the class lists, the shared files."""
    import cv2
    import PIL
    from PIL import Image, ImageFile

    from mtkd import __version__

    head = [KIND, VERSION, __version__, PIL.__version__, cv2.__version__, Image.MAX_IMAGE_PIXELS]
    head += [
        ImageFile.LOAD_TRUNCATED_IMAGES,
        BOX_EPS,
        spec.det_names,
        [[t.name, t.names, t.lines] for t in spec.seg_tasks.values()],
        spec.ignore_index,
        shared,
    ]
    return hashlib.sha256(json.dumps(head).encode()).hexdigest()


def _sample_key(name: str, stats: list) -> bytes:
    """What one entry depends on: its name and its files' paths, sizes and mtimes (128 bits, hex)."""
    return hashlib.sha256(json.dumps([name, stats]).encode()).hexdigest()[:32].encode()


def _entry(load: Loader, files: tuple[Path, tuple[Path, ...], tuple[Path, ...]], i: int) -> Entry:
    none = (PROBLEM, *_UNTRUSTED[1:])
    try:
        sample, problems = load(i)
    except Exception:  # the validating read at load time raises it again, where it always did
        return none
    if problems or sample is None:
        return none
    fast = 0
    got = cv2_read(files[0])
    fast |= FAST_IMAGE if got is not None and np.array_equal(got, sample.image) else 0
    if files[1]:  # every task's mask decoded identically by OpenCV (masks in the sample's task order)
        same = [
            got is not None and np.array_equal(got, ref)
            for got, ref in zip((cv2_read(p, mask=True) for p in files[1]), sample.masks.values())
        ]
        fast |= FAST_MASK if all(same) and len(same) == len(sample.masks) else 0
    h, w = sample.image.shape[:2]
    return VALID, (h, w), fast, sample.boxes, sample.labels


def _map(fn: Callable[[int], Entry], todo: list[int]) -> list[Entry]:
    """``fn`` over ``todo`` in threads (decoders release the GIL).

    ``read_image``/``read_mask`` turn PIL's ``DecompressionBombWarning`` into an error inside
    ``warnings.catch_warnings()``, which saves and restores the process-wide filter list and so is not
    thread-safe. Installing the same filter here, before the threads start, makes every list a thread can
    see hold it; the original list is restored after the threads are joined.
    """
    from PIL import Image

    threads = min(MAX_THREADS, os.cpu_count() or 1, len(todo))
    if threads <= 1:
        return [fn(i) for i in todo]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(threads, thread_name_prefix="mtkd-index") as pool:
            return list(pool.map(fn, todo))


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in ARRAYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read(cache: Path, key: str, nc_det: int) -> SampleIndex | None:
    """The cached index when its ``key`` is ``key`` and it is sound; ``None`` otherwise (a damaged one is said)."""
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(z["meta"].item())
            if not isinstance(meta, dict):
                raise ValueError("meta is not a JSON object")
            if meta.get("kind") != KIND or meta.get("version") != VERSION or meta.get("key") != key:
                return None  # another format version, other versions or class lists: index again
            arrays: dict[str, Any] = {k: z[k] for k in ARRAYS}
    except Exception as e:  # whatever a damaged file makes numpy, zipfile or json raise
        why = f"unreadable: {type(e).__name__}" + (f": {str(e).splitlines()[0]}" if str(e) else "")
        log.warning(f"{cache}: ignoring the dataset index ({why}); rebuilding it")
        return None
    why = "its digest does not match its arrays" if meta.get("digest") != _digest(arrays) else None
    why = why or _unsound(arrays, nc_det)
    if why:
        log.warning(f"{cache}: ignoring the dataset index ({why}); rebuilding it")
        return None
    return SampleIndex(**arrays)


def _unsound(a: dict[str, np.ndarray], nc_det: int) -> str | None:
    """Why the arrays are not a consistent index (``None`` when they are)."""
    n = len(a["names"]) if a["names"].ndim == 1 else -1
    want = {
        "keys": ("S32", (n,)),
        "state": ("u1", (n,)),
        "hw": ("i4", (n, 2)),
        "fast": ("u1", (n,)),
        "offsets": ("i8", (n + 1,)),
        "labels": ("i8", (len(a["labels"]),)),
        "boxes": ("f4", (len(a["labels"]), 4)),
    }
    if a["names"].dtype.kind != "U" or n < 0 or len(set(a["names"].tolist())) != n:
        return "its sample names are not a list of distinct strings"
    for k, (dtype, shape) in want.items():
        if a[k].dtype != np.dtype(dtype) or a[k].shape != shape:
            return f"'{k}' is {a[k].dtype} {a[k].shape}, expected {np.dtype(dtype)} {shape}"
    state, hw, off, boxes, labels = a["state"], a["hw"], a["offsets"], a["boxes"], a["labels"]
    counts = np.diff(off)
    if n and (int(state.max()) > UNTRUSTED or int(a["fast"].max()) > FAST_IMAGE | FAST_MASK):
        return "a state or decoder flag out of range"
    if off[0] != 0 or (counts < 0).any() or off[-1] != len(boxes) or counts[state != VALID].any():
        return "inconsistent box offsets"
    if (hw[state == VALID] <= 0).any():
        return "an image size that is not positive"
    if len(labels) and (labels.min() < 0 or labels.max() >= nc_det):
        return f"a label outside det classes 0..{nc_det - 1}"
    size = np.repeat(hw[:, ::-1], counts, axis=0).astype(np.float32)  # (w, h) of each box's image
    x1, y1, x2, y2 = boxes.T
    ok = np.isfinite(boxes).all(1) & (x1 >= 0) & (y1 >= 0) & (x1 <= x2) & (y1 <= y2)
    if not (ok & (x2 <= size[:, 0]) & (y2 <= size[:, 1])).all():
        return "a box outside its image"
    return None


def _write(cache: Path, index: SampleIndex, key: str) -> None:
    arrays = index.arrays()
    meta = {"kind": KIND, "version": VERSION, "key": key, "digest": _digest(arrays)}
    try:
        if not cache.parent.is_dir():
            raise OutputError(
                f"{cache}: cannot write the dataset index (folder {cache.parent} does not exist)"
            )
        with atomic_write(cache, "wb", what="dataset index") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    except OutputError as e:
        if str(cache) not in _told:
            _told.add(str(cache))
            log.warning(f"{e}; keeping the index in memory (each run validates this split again)")
