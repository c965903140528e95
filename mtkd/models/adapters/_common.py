"""Helpers every non-native adapter shares: strict key checks, class names, input normalization, weights.

- ``check_keys``: unknown config/arch keys raise ``ConfigError`` with a did-you-mean hint (the protocol prologue
  in ``base.MultiTaskAdapter.from_config`` / ``from_arch`` calls it).
- ``resolve_names`` / ``check_head``: class names of a task, and the ``head`` key ``build_model`` may add.
- ``check_seg_tasks``: a ``{task: [class names]}`` declaration of segmentation tasks, validated (plain data).
- ``InputNorm``: optional ``(x - mean) / std`` of ``[B, 3, H, W]`` images in [0, 1].
- ``load_state_dict_file``: strict, ``weights_only=True`` loading of a user's ``state_dict`` file.
- ``check_rebuildable``: refuse an ``arch()`` that would not rebuild the live module (e.g. after pruning).
- ``describe``: a short description of a module output (tensor shape, container size) for error messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtkd.data.descriptor import RESERVED_TASK_NAMES, SINGLE_TASK
from mtkd.errors import CheckpointError, ConfigError
from mtkd.utils.suggest import did_you_mean


def check_keys(config: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Strict config: the first key not in ``allowed`` raises ``ConfigError`` ``"{where}: unknown field 'k'"``
    with a did-you-mean suggestion (or the allowed keys when none is close)."""
    for key in config:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"; allowed: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown field {key!r}{hint}")


def resolve_names(names: Sequence[str] | None, nc: int | None, task: str, where: str) -> list[str]:
    """Class names of ``task`` ("det"/"seg"): ``names`` if given (must have ``nc`` entries when ``nc`` is given),
    else placeholders ``["class0", ...]``, else ``[]``."""
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}: field '{task}_names' = {names!r}; expected a list of class names")
        if nc is not None and nc != len(names):
            raise ConfigError(f"{where}: field '{task}_names' has {len(names)} names but nc_{task} = {nc}")
        return list(names)
    return [f"class{i}" for i in range(nc)] if nc else []


def check_seg_tasks(value: Any, where: str, field: str = "seg_tasks") -> dict[str, list[str]]:
    """Validate ``{task: [class names]}`` (plain data from a config or an arch) and return a copy, in order.

    Task names follow the dataset descriptor's rules (``mtkd.data.descriptor``: lower-case letters, digits and
    ``_``, starting with a letter; ``det``, ``seg``, ... reserved), except that ``{"seg": names}`` alone is allowed:
    it is the single seg task (``seg_names``). Each task needs at least one class name; names are unique strings.
    """
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f"{where}: field {field!r} = {value!r}; expected a mapping of task name -> class names"
        )
    tasks: dict[str, list[str]] = {}
    for task, names in value.items():
        key = f"{field}.{task}"
        if not isinstance(task, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", task):
            raise ConfigError(
                f"{where}: field {key!r}: a task name is lower-case letters, digits and _ (starting with a letter)"
            )
        if task in RESERVED_TASK_NAMES and not (task == SINGLE_TASK and len(value) == 1):
            raise ConfigError(
                f"{where}: field {key!r}: '{task}' is reserved ({', '.join(RESERVED_TASK_NAMES)}); rename the task"
            )
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise ConfigError(f"{where}: field {key!r} = {names!r}; expected a non-empty list of class names")
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ConfigError(
                f"{where}: field {key!r} = {list(names)!r}; expected unique, non-empty class names"
            )
        tasks[task] = list(names)
    return tasks


def check_head(head: Any, kind: str | None, where: str) -> None:
    """``build_model(..., head=...)`` puts ``head`` into dict configs; for adapters whose head kind is fixed by the
    model, it must agree (``kind`` is ``None`` for seg-only models, where it does not apply)."""
    if head is not None and kind is not None and head != kind:
        raise ConfigError(f"{where}: field 'head' = {head!r}, but this model's detection head is {kind!r}")


def describe(x: Any) -> str:
    """``"a tensor of shape [B, C, h, w]"``, ``"a tuple of 3 items"`` or ``"a <type>"``, for error messages."""
    if isinstance(x, Tensor):
        return f"a tensor of shape {list(x.shape)}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} items"
    return f"a {type(x).__name__}"


class InputNorm(nn.Module):
    """Optional per-channel input normalization ``(x - mean) / std`` of ``[B, 3, H, W]`` images in [0, 1]
    (e.g. ImageNet statistics for a teacher trained with them); identity when both are ``None``.
    ``mean``/``std`` are non-persistent buffers ``[1, 3, 1, 1]`` (not in the state_dict; ``arch()`` has them)."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, *, where: str) -> None:
        super().__init__()
        self.enabled = mean is not None or std is not None
        mean, std = list(mean or (0.0, 0.0, 0.0)), list(std or (1.0, 1.0, 1.0))
        values = mean + std
        if (
            len(mean) != 3
            or len(std) != 3
            or not all(isinstance(v, (int, float)) for v in values)
            or min(std) <= 0
        ):
            raise ConfigError(
                f"{where}: fields 'input_mean'/'input_std' = {mean}/{std}; expected 3 numbers, std > 0"
            )
        for name, v in (("mean", mean), ("std", std)):
            self.register_buffer(
                name, torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
            )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` → ``[B, 3, H, W]``."""
        return (x - self.mean) / self.std if self.enabled else x

    def arch(self) -> dict[str, list[float]]:
        """``{"input_mean": [3], "input_std": [3]}``, or ``{}`` when disabled."""
        if not self.enabled:
            return {}
        return {"input_mean": self.mean.flatten().tolist(), "input_std": self.std.flatten().tolist()}


def load_state_dict_file(module: nn.Module, path: str | Path, key: str | None = None) -> None:
    """Load a ``state_dict`` file into ``module`` strictly; ``CheckpointError`` naming the file and the mismatch.

    The file is read with ``torch.load(weights_only=True)`` (no code runs); ``key`` takes ``ckpt[key]`` from a
    nested checkpoint (e.g. ``{"state_dict": ..., "epoch": 3}``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: field 'state_dict': file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: field 'state_dict': cannot be loaded safely (weights_only=True): {first}. "
            f"Save the weights with torch.save(model.state_dict(), path)"
        ) from None
    if key is not None:
        if not isinstance(sd, Mapping) or key not in sd:
            raise CheckpointError(f"{path}: field 'state_dict_key' = {key!r} not found in the file")
        sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(
            f"{path}: field 'state_dict': expected a dict of tensors"
            f"{'' if key else ' (set state_dict_key if the weights are nested, e.g. state_dict_key: state_dict)'}"
        )
    own = module.state_dict()
    problems = {
        "missing keys": [k for k in own if k not in sd],
        "unexpected keys": [k for k in sd if k not in own],
        "shape mismatch": [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
                           if k in sd and tuple(sd[k].shape) != tuple(v.shape)],
    }  # fmt: skip
    if any(problems.values()):
        parts = [f"{len(v)} {label} (e.g. {', '.join(v[:3])})" for label, v in problems.items() if v]
        raise CheckpointError(f"{path}: field 'state_dict' does not match the model: {'; '.join(parts)}")
    module.load_state_dict(sd, strict=True)


def check_rebuildable(
    module: nn.Module, factory: Callable[[], nn.Module], *, what: str, hint: str = "", meta: bool = True
) -> None:
    """Raise ``CheckpointError`` when ``factory()`` (the arch description) builds tensors of other shapes than
    ``module`` has (e.g. after pruning), so a checkpoint is never written that cannot be loaded back.

    The reference is built on the ``meta`` device (no memory, no init cost) when ``meta`` and the constructor
    allow it, else on the CPU. A passed check is remembered for the module's current shapes (``arch()`` is called
    at every checkpoint save).
    """
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    signature = hash(tuple(own.items()))
    if getattr(module, "_mtkd_rebuild_ok", None) == signature:
        return
    ref = None
    if meta:
        try:
            with torch.device("meta"):
                ref = factory()
        except Exception:  # a constructor that needs real tensors (.item(), numpy): build it on the CPU
            ref = None
    ref = ref if ref is not None else factory()
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    diff = [f"{k} {v} vs {ref_shapes.get(k, 'missing')}" for k, v in own.items() if ref_shapes.get(k) != v]
    diff += [f"{k} missing" for k in ref_shapes if k not in own]
    if diff:
        raise CheckpointError(
            f"{what}: the live model no longer matches its architecture description ({len(diff)} tensors differ, "
            f"e.g. {diff[0]}; pruned?), so it cannot be saved as a safe checkpoint. {hint}".rstrip()
        )
    module._mtkd_rebuild_ok = signature
