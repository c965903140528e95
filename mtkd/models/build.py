"""Entry points: build a model by name/config, rebuild it from an arch description, save/load its state.

``build_model`` and ``build_from_arch`` dispatch on the adapter name to the ``ADAPTER`` class of
``mtkd.models.adapters.<name>`` (imported lazily, so the ``smp`` adapter's imports are paid only when used) and
call its protocol classmethods ``from_config(config, nc_det, nc_seg, det_names, seg_names, seg_tasks=)`` /
``from_arch(arch, *, trust_code, where)`` (``mtkd.models.adapters.base.MultiTaskAdapter``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mtkd.checkpoint import load_checkpoint
from mtkd.errors import CheckpointError, ConfigError
from mtkd.models.adapters.base import MultiTaskAdapter
from mtkd.models.trust import TrustCode
from mtkd.utils.suggest import did_you_mean as _did_you_mean

ADAPTERS: dict[str, str] = {
    "native": "mtkd.models.adapters.native",
    "ultralytics": "mtkd.models.adapters.ultralytics",
    "smp": "mtkd.models.adapters.smp",
    "composite": "mtkd.models.adapters.composite",
    "generic": "mtkd.models.adapters.generic",
}


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    return _did_you_mean(name, choices)


def _adapter_class(name: Any, where: str) -> type[MultiTaskAdapter]:
    if name not in ADAPTERS:
        raise ConfigError(
            f"{where}: unknown adapter {name!r}; expected one of {list(ADAPTERS)}{did_you_mean(str(name), ADAPTERS)}"
        )
    return importlib.import_module(ADAPTERS[name]).ADAPTER


def _names(nc: int | None, names: Sequence[str] | None, task: str) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if nc is not None and nc != len(names):
            raise ConfigError(f"build_model: nc_{task}={nc} but {len(names)} {task}_names were given")
        return names
    if nc is None:
        raise ConfigError(f"build_model: give nc_{task} or {task}_names (number of {task} classes)")
    if not isinstance(nc, int) or nc < 0:
        raise ConfigError(f"build_model: nc_{task} must be a non-negative integer, got {nc!r}")
    return [f"class{i}" for i in range(nc)]


def _takes_head(config: Mapping[str, Any]) -> bool:
    """Whether ``build_model(head=...)`` applies to a dict config: not when its adapter's model fixes the head kind
    (``head_from_model``, e.g. Ultralytics), nor for a composite whose det member is such an adapter."""
    if config.get("adapter") == "composite":
        det = config.get("det")
        return not isinstance(det, Mapping) or _takes_head(det)
    if config.get("adapter") not in ADAPTERS:
        return True  # the unknown adapter is reported by the caller
    return not getattr(_adapter_class(config["adapter"], "model config 'adapter'"), "head_from_model", False)


def build_model(
    name_or_config: str | Mapping[str, Any],
    *,
    nc_det: int | None = None,
    nc_seg: int | None = None,
    head: str | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
    seg_tasks: Mapping[str, Sequence[str]] | None = None,
    **kw: Any,
) -> MultiTaskAdapter:
    """Build a fresh (unpruned, randomly initialised) model.

    Args:
        name_or_config: ``"yolo_mt_n" | "yolo_mt_s" | "yolo_mt_m"`` (native family) or a config dict with
            ``"adapter": "native" | "ultralytics" | "smp" | "composite" | "generic"`` plus that adapter's keys.
        nc_det, nc_seg: class counts (or give ``det_names``/``seg_names``; placeholder names ``class<i>`` otherwise).
        seg_tasks: instead of ``nc_seg``/``seg_names``, the seg tasks ``{task: class names}``, e.g.
            ``{"drivable": [...], "lane": [...]}`` (one seg head/output per task; adapters ``native``, ``generic``
            and ``composite``). ``{"seg": names}`` is ``seg_names=names``, so
            ``seg_tasks={t: st.names for t, st in spec.seg_tasks.items()}`` fits any ``DataSpec``.
        head: detection head kind for the native family (``"anchor"`` default, or ``"anchor_free"``); for a
            dict config it fills ``config["head"]`` only when the config has none and the adapter takes a head
            choice (not Ultralytics models, whose head kind is inferred from the model: ``head_from_model``).
        **kw: extra adapter config keys (native: ``anchors``, ``reg_max``), merged into the config.

    Returns the adapter module; ``model(images)`` returns a ``MultiTaskOutput``. Raises ``ConfigError``.
    """
    if isinstance(name_or_config, str):
        from mtkd.models.adapters.native import NAMES

        if name_or_config not in NAMES:
            raise ConfigError(
                f"build_model: unknown model name {name_or_config!r}; expected one of {list(NAMES)} or a config "
                f"dict with 'adapter'{did_you_mean(name_or_config, NAMES)}"
            )
        config: dict[str, Any] = {"adapter": "native", "name": name_or_config, "head": head or "anchor", **kw}
    elif isinstance(name_or_config, Mapping):
        config = {**dict(name_or_config), **kw}
        if "adapter" not in config:
            raise ConfigError(f"model config: missing key 'adapter' (one of {list(ADAPTERS)})")
        if head is not None and "head" not in config and _takes_head(config):
            config["head"] = head
    else:
        raise ConfigError(
            f"build_model: expected a model name or a config dict, got {type(name_or_config).__name__}"
        )
    det = _names(nc_det, det_names, "det")
    module = _adapter_class(config["adapter"], "model config 'adapter'")
    if seg_tasks is not None:
        if nc_seg is not None or seg_names is not None:
            raise ConfigError(
                "build_model: give nc_seg/seg_names (one seg task) or seg_tasks (several), not both"
            )
        return module.from_config(config, len(det), None, det, None, seg_tasks=seg_tasks)
    seg = _names(nc_seg, seg_names, "seg")
    return module.from_config(config, len(det), len(seg), det, seg)


def build_from_arch(
    arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch"
) -> MultiTaskAdapter:
    """Rebuild an architecture (pruned widths included) from ``model.arch()``; weights are random until loaded.

    ``arch`` is data from a file: nothing it names is imported or evaluated unless ``trust_code`` allows that
    import path (``mtkd.models.trust``; only the ``generic`` adapter names code). ``where`` (the file) prefixes
    the ``CheckpointError`` raised for an untrusted path.
    """
    if not isinstance(arch, Mapping) or "adapter" not in arch:
        raise ConfigError("arch: expected a dict with an 'adapter' key (as written by model.arch())")
    module = _adapter_class(arch["adapter"], "arch 'adapter'")
    return module.from_arch(dict(arch), trust_code=trust_code, where=where)


def load_state_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str = "checkpoint"
) -> None:
    """``load_state_dict(strict=True)`` with a ``CheckpointError`` naming the first mismatching key and shapes."""
    own = model.state_dict()
    for k, v in state_dict.items():
        if k not in own:
            raise CheckpointError(f"{where}: state_dict key {k!r} is not in the model built from its arch")
        if tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: state_dict key {k!r} has shape {tuple(v.shape)}, the model built from its arch "
                f"expects {tuple(own[k].shape)}"
            )
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise CheckpointError(f"{where}: state_dict lacks key {missing[0]!r} (and {len(missing) - 1} more)")
    model.load_state_dict(dict(state_dict), strict=True)


def load_model(
    path_or_ckpt: str | os.PathLike | Mapping[str, Any],
    map_location: str | torch.device = "cpu",
    *,
    trust_code: TrustCode = False,
    where: str | None = None,
) -> MultiTaskAdapter:
    """Load a model from an mtkd checkpoint file (``weights_only=True``) or an already-loaded checkpoint dict.

    Args:
        trust_code: import paths the file's arch may name (``mtkd.models.trust``); default: none.
        where: the file a checkpoint dict was read from, for messages (default: the path, or ``"checkpoint"``).

    Raises ``CheckpointError`` when the file is not a safe mtkd checkpoint, its arch names code that
    ``trust_code`` does not allow, the arch is unknown or malformed, or the state_dict does not fit the arch
    (naming the first mismatching key and both shapes).
    """

    if isinstance(path_or_ckpt, Mapping):
        ckpt, where = dict(path_or_ckpt), where or "checkpoint"
        m = ckpt.get("model")
        if not isinstance(m, Mapping) or "arch" not in m or "state_dict" not in m:
            raise CheckpointError("checkpoint: field 'model' must be a dict with 'arch' and 'state_dict'")
    else:
        ckpt, where = load_checkpoint(path_or_ckpt, map_location=map_location), str(path_or_ckpt)
    arch, state = ckpt["model"]["arch"], ckpt["model"]["state_dict"]
    try:
        model = build_from_arch(arch, trust_code=trust_code, where=where)
    except ConfigError as e:
        raise CheckpointError(f"{where}: cannot rebuild the model from its arch: {e}") from None
    load_state_strict(model, state, where)
    return model.to(map_location)
