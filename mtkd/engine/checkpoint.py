"""Safe, atomic checkpoints (DESIGN.md §4).

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` reads: tensors, numbers, strings,
lists and dicts only. Layout::

    {
      "format": "mtkd-checkpoint", "mtkd_version": "0.1.0",
      "model": {"arch": {...JSON-like, rebuilds the architecture incl. pruned widths...},
                "state_dict": {name: tensor}},          # deployable weights (EMA weights when EMA is used)
      "names": {"det": [...], "seg": [...]},
      "config": {...resolved config...},               # {} when not from a training run
      "metrics": {...},                                # optional
      "train": {...},                                  # optional: epoch, optimizer, scheduler, ema, rng, ...
    }
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mtkd import __version__
from mtkd.errors import CheckpointError

FORMAT = "mtkd-checkpoint"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    A crash or Ctrl-C during the write leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"format": FORMAT, "mtkd_version": __version__, **ckpt}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an mtkd checkpoint with ``weights_only=True`` (never unpickles code).

    Raises ``CheckpointError`` naming the file when it is missing, not loadable safely (e.g. a pickled module:
    use ``tools/convert.py --trust-pickle``), or not an mtkd checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError with long messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot be loaded safely (weights_only=True): {first}. If this is a pickled model "
            f"(torch.save(model)) or an Ultralytics/Torch-Pruning file, convert it first: "
            f"mtkd convert {path} --out safe.pt --trust-pickle"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an mtkd checkpoint (expected a dict with format={FORMAT!r}); "
            f"convert it with: mtkd convert {path} --out safe.pt"
        )
    model = ckpt.get("model")
    if not isinstance(model, dict) or "arch" not in model or "state_dict" not in model:
        raise CheckpointError(f"{path}: field 'model' must be a dict with 'arch' and 'state_dict'")
    return ckpt
