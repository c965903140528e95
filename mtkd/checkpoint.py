"""Safe, atomic checkpoints (DESIGN.md §4): the one module that assembles, writes and reads the checkpoint dict.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` reads: tensors, numbers, strings,
lists and dicts only. Layout::

    {
      "format": "mtkd-checkpoint", "mtkd_version": "0.2.0",
      "model": {"arch": {...JSON-like, rebuilds the architecture incl. pruned widths...},
                "state_dict": {name: tensor}},          # deployable weights (EMA weights when EMA is used)
      "names": {"det": [...], "seg": [...]},            # several seg tasks: {"det": [...], "seg_tasks": {task: [...]}}
      "config": {...resolved config...},               # {} when not from a training run
      "metrics": {...},                                # optional
      "train": {...},                                  # optional: epoch, optimizer, scheduler, ema, rng, ...
    }

``save_model`` / ``checkpoint_dict`` build that dict from a model (an adapter: anything with ``arch()``,
``state_dict()``, ``det_names`` and ``seg_tasks`` or ``seg_names``; a DDP wrapper is unwrapped); ``save_checkpoint`` writes a dict
atomically; ``load_checkpoint`` reads one safely. Rebuilding the model is ``mtkd.models.load_model``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mtkd import __version__
from mtkd.errors import CheckpointError
from mtkd.utils.atomic import atomic_write

FORMAT = "mtkd-checkpoint"


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically (``mtkd.utils.atomic.atomic_write``: temp file, fsync, ``os.replace``).

    A crash, a full disk or Ctrl-C during the write leaves the previous file at ``path`` intact; file-system errors
    raise a one-line ``OutputError`` naming ``path``.
    """
    ckpt = {"format": FORMAT, "mtkd_version": __version__, **ckpt}
    with atomic_write(path, "wb", what="checkpoint") as f:
        torch.save(ckpt, f)
    return Path(path)


def _version_tuple(v: str) -> tuple[int, ...] | None:
    """``"1.2.3rc1"`` → ``(1, 2, 3)``; ``None`` when ``v`` does not start with a dotted number."""
    m = re.match(r"(\d+(?:\.\d+)*)", v)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in one line: a pickled model (convert it with
    ``--trust-pickle``) or a file that is not a readable checkpoint at all (say so; no pickle advice)."""
    from mtkd.utils.sniff import scan_file

    scan = scan_file(path)
    if scan.container == "torchscript":
        return CheckpointError(
            f"{path}: a TorchScript archive (torch.jit.save), not an mtkd checkpoint; mtkd "
            f"cannot rebuild a model from it"
        )
    if scan.container in ("zip", "pickle") and scan.error is None and scan.unsafe_globals:
        what = scan.example_class() or scan.unsafe_globals[0]
        return CheckpointError(
            f"{path}: a pickled model or object (it would import {what}), which weights_only=True refuses because "
            f"unpickling runs code; if you trust this file, convert it: mtkd convert {path} --out safe.pt "
            f"--trust-pickle"
        )
    reason = scan.error or (str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__)
    return CheckpointError(
        f"{path}: not a readable checkpoint (corrupt, truncated or not a PyTorch file: {reason})"
    )


def _check_version(path: Path, ckpt: dict[str, Any]) -> None:
    ver = ckpt.get("mtkd_version")
    if ver is None:
        return
    have = _version_tuple(ver) if isinstance(ver, str) else None
    if have is None:
        raise CheckpointError(
            f"{path}: field 'mtkd_version' = {ver!r}; expected a version string like '0.2.0'"
        )
    if have > (_version_tuple(__version__) or ()):
        raise CheckpointError(
            f"{path}: written by mtkd {ver}, newer than this mtkd {__version__}; its format may hold fields this "
            f"version would silently drop: upgrade mtkd to load it"
        )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an mtkd checkpoint with ``weights_only=True`` (never unpickles code).

    Raises ``CheckpointError`` naming the file when it is missing, a pickled model (use ``mtkd convert
    --trust-pickle``), corrupt or not a PyTorch file, not an mtkd checkpoint, or written by a newer mtkd.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (
        Exception
    ) as e:  # torch raises UnpicklingError / RuntimeError / EOFError / KeyError with long messages
        raise _unreadable(path, e) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an mtkd checkpoint (expected a dict with format={FORMAT!r}); "
            f"convert it with: mtkd convert {path} --out safe.pt"
        )
    _check_version(path, ckpt)
    model = ckpt.get("model")
    if not isinstance(model, dict) or "arch" not in model or "state_dict" not in model:
        raise CheckpointError(f"{path}: field 'model' must be a dict with 'arch' and 'state_dict'")
    return ckpt


def model_state(model: Any, state_dict: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """``{"arch": model.arch(), "state_dict": {name: tensor}}``: detached CPU copies; DDP is unwrapped.

    ``state_dict`` replaces the model's own tensors (e.g. the EMA weights of a training run).
    """
    model = getattr(model, "module", model)
    if not callable(getattr(model, "arch", None)):
        raise TypeError(f"model_state: expected an mtkd adapter (with arch()), got {type(model).__name__}")
    state = model.state_dict() if state_dict is None else state_dict
    return {"arch": model.arch(), "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()}}


def model_names(model: Any) -> dict[str, Any]:
    """The class names a model declares, in the checkpoint's ``names`` layout: ``{"det": [...], "seg": [...]}``
    for a single-task (or det-only, ``"seg": []``) model, ``{"det": [...], "seg_tasks": {task: [...]}}`` for a
    model with several seg tasks (``model.seg_tasks``)."""
    tasks = dict(getattr(model, "seg_tasks", None) or {})
    if tasks and list(tasks) != ["seg"]:
        return {"det": list(model.det_names), "seg_tasks": tasks}
    return {"det": list(model.det_names), "seg": list(tasks.get("seg", getattr(model, "seg_names", [])))}


def checkpoint_names(names: Mapping[str, Any]) -> dict[str, Any]:
    """Plain copy of a ``names`` record (lists, and ``seg_tasks`` as ``{task: [...]}``); ``seg_tasks`` that hold only
    the single task ``"seg"`` are written in the single-task layout ``"seg": [...]``."""
    out: dict[str, Any] = {}
    for key, value in names.items():
        if key == "seg_tasks" and isinstance(value, Mapping):
            tasks = {
                str(t): list(getattr(v, "names", v)) for t, v in value.items()
            }  # names, or DataSpec SegTasks
            if list(tasks) == ["seg"]:
                out["seg"] = tasks["seg"]
            else:
                out["seg_tasks"] = tasks
        else:
            out[key] = list(value)
    return out


def checkpoint_dict(
    model: Any,
    *,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    names: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (module docstring); ``format``/``mtkd_version`` are added on save.

    Args:
        config: the resolved config (``{}`` when not from a training run).
        metrics: evaluation / provenance records (optional).
        train: training state for resuming (optional; ``epoch``, ``optimizer``, ...).
        state_dict: weights to store instead of the model's own (e.g. EMA weights).
        names: ``{"det": [...], "seg": [...]}`` or ``{"det": [...], "seg_tasks": {task: [...]}}`` class names to
            record instead of the model's (a training run records its dataset's).
    """
    inner = getattr(model, "module", model)
    ckpt: dict[str, Any] = {
        "model": model_state(inner, state_dict),
        "names": checkpoint_names(names or model_names(inner)),
        "config": dict(config or {}),
    }
    if metrics is not None:
        ckpt["metrics"] = dict(metrics)
    if train is not None:
        ckpt["train"] = dict(train)
    return ckpt


def save_model(path: str | os.PathLike, model: Any, **fields: Any) -> Path:
    """``save_checkpoint(checkpoint_dict(model, **fields), path)``: the one way mtkd saves a model."""
    return save_checkpoint(checkpoint_dict(model, **fields), path)
