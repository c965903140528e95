"""Process-level environment choices, made where a command starts (never at import time)."""

from __future__ import annotations

import os
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
