"""Process-level environment choices, made where a command starts (never at import time)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path


def configure_offline(config_dir: str | os.PathLike | None = None) -> None:
    """Make Ultralytics (and albumentations) offline-safe and quiet before it is first imported.

    Sets (only when the user has not set them already):
      - ``YOLO_OFFLINE=1``: skip the DNS probe Ultralytics does on import;
      - ``YOLO_AUTOINSTALL=False``: never let Ultralytics pip-install anything;
      - ``YOLO_VERBOSE=False``: no banners from Ultralytics in our output;
      - ``YOLO_CONFIG_DIR``: where Ultralytics writes its settings file (default: its own choice);
      - ``NO_ALBUMENTATIONS_UPDATE=1``: albumentations otherwise asks PyPI for a newer version on import.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if config_dir is not None:
        Path(config_dir).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))


@contextlib.contextmanager
def quiet_ultralytics() -> Iterator[None]:
    """Drop Ultralytics' INFO messages (its settings-file banner on first import, "Overriding model.yaml nc=...")
    while the block runs, without changing its verbosity for the rest of the process: library use stays silent
    and a user's own Ultralytics calls log as they would. Warnings and errors still show.

    Usage: ``with quiet_ultralytics(): from ultralytics.nn.modules import Conv``.
    """
    logger = logging.getLogger("ultralytics")

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@contextlib.contextmanager
def frozen_gc_heap() -> Iterator[int]:
    """Exclude every object alive on entry from the cyclic garbage collector's full passes, until exit.

    A long loop (training, repeated evaluation) allocates enough to trigger full (generation-2) collections,
    and each one traverses every tracked object of the process: with torch, Ultralytics and a model loaded
    that is ~0.4 M objects and 0.1-0.2 s, a pause that made one evaluation pass in ten twice as long on the
    2-core CPU. ``gc.freeze()`` moves the objects alive now into the permanent generation, which collections
    skip (refcounting still frees them); forked DataLoader workers also stop touching those objects' headers,
    which keeps their pages shared (the use ``gc.freeze``'s documentation describes). One ``gc.collect()``
    first, so no garbage cycle is frozen; ``gc.unfreeze()`` on exit hands everything back to the collector, so
    a process that runs several trainings (``mtkd study``, the tests) does not keep the earlier runs' cycles.

    Yields the number of objects frozen. Not re-entrant: an inner use unfreezes the outer one's objects early
    (harmless, only the saving is lost).
    """
    gc.collect()
    gc.freeze()
    try:
        yield gc.get_freeze_count()
    finally:
        gc.unfreeze()
