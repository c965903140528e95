"""Building blocks of the ``ultralytics`` adapter: model YAML / checkpoint loading, the shape reference of an
arch (no forward pass, so it also builds on the ``meta`` device), and feature-tap names by stride.

Every YAML passes ``validate_model_yaml`` before Ultralytics sees it; an arch's ``split_free`` paths and ``widths``
are validated data (``ultralytics_arch``), so rebuilding from a checkpoint never runs code named by the file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtkd.errors import CheckpointError, ConfigError
from mtkd.models.adapters.ultralytics_arch import apply_widths, check_split_free
from mtkd.models.adapters.ultralytics_blocks import make_split_free
from mtkd.models.adapters.ultralytics_yaml import validate_model_yaml
from mtkd.models.heads import SegHead
from mtkd.utils.env import quiet_ultralytics

WHERE = "ultralytics adapter"


def reference(arch: Mapping[str, Any]) -> nn.Module:
    """A module with the adapter's state_dict layout built from ``arch`` by Ultralytics' ``parse_model`` (no
    stride-probing forward pass, so it also builds on the ``meta`` device): only its tensor shapes are used."""
    from ultralytics.nn.tasks import parse_model

    cfg = copy.deepcopy(dict(arch["yaml"]))
    validate_model_yaml(cfg, f"{WHERE} arch field 'yaml'")
    ref = nn.Module()
    ref.model = nn.Module()
    ref.model.model, _ = parse_model(copy.deepcopy(cfg), ch=cfg.get("channels", 3), verbose=False)
    if arch.get("seg_head") is not None:
        ch = [int(s[0].conv.in_channels) for s in ref.model.model[-1].cv2]
        ref.seg = SegHead(len(arch.get("seg_names") or ()), ch[:2], **arch["seg_head"])
    apply_arch_layout(ref, arch, f"{WHERE} arch")
    return ref


def apply_arch_layout(module: nn.Module, arch: Mapping[str, Any], where: str) -> None:
    """The arch's ``split_free`` blocks and pruned ``widths`` (validated data; nothing is imported)."""
    if arch.get("split_free"):
        make_split_free(
            module, check_split_free(arch["split_free"], where), where=f"{where} field 'split_free'"
        )
    if arch.get("widths"):
        apply_widths(module, arch["widths"], where)


def tap_names(model: nn.Module, head: nn.Module, idx: list[int]) -> list[str]:
    """Feature-tap names of the head's inputs by stride: ``p{log2(stride)}`` (``p2`` at stride 4, ``p3`` at 8,
    ...); the strides are the Detect head's, else measured with one small forward pass (eval mode)."""
    strides = [int(s) for s in getattr(head, "stride", torch.zeros(0)).tolist()]
    if len(strides) != len(idx) or min(strides, default=0) <= 0:
        layers, was = model.model, model.training
        size = 64 * max(1, int(max(float(getattr(model, "stride", torch.tensor([32.0])).max()), 32.0)) // 32)
        y, x = [], torch.zeros(1, int(model.yaml.get("channels", 3)), size, size)
        try:
            model.eval()
            with torch.no_grad():
                for m in layers[:-1]:
                    if m.f != -1:
                        x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
                    x = m(x)
                    y.append(x)
        finally:
            model.train(was)
        strides = [size // int(y[j].shape[-1]) for j in idx]
    names = [f"p{s.bit_length() - 1}" if s > 0 and s & (s - 1) == 0 else f"s{s}" for s in strides]
    return names if len(set(names)) == len(names) else [f"p{3 + i}" for i in range(len(idx))]


def load_yaml(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    from ultralytics.nn.tasks import yaml_model_load

    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    try:
        return yaml_model_load(spec)
    except Exception as e:  # FileNotFoundError from check_yaml, YAML errors
        raise ConfigError(
            f"{WHERE}: field 'model' = {spec!r}: not a readable model YAML ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); use a bundled name like 'yolov8n.yaml' or a file path"
        ) from None


def from_yaml(cfg: dict[str, Any], nc: int | None, where: str = f"{WHERE}: field 'model'") -> nn.Module:
    """Build an Ultralytics model from a YAML dict after ``validate_model_yaml`` (nothing in it is evaluated)."""
    from ultralytics.nn.tasks import DetectionModel, SemanticSegmentationModel, guess_model_task

    validate_model_yaml(cfg, where)
    task = guess_model_task(cfg)
    if task not in ("detect", "semantic"):
        raise ConfigError(
            f"{WHERE}: field 'model': a {task!r} model YAML; expected a detect or semantic model"
        )
    cls = DetectionModel if task == "detect" else SemanticSegmentationModel
    try:
        with quiet_ultralytics():  # no "Overriding model.yaml nc=..." in library use
            return cls(cfg, nc=nc or None, verbose=False)
    except Exception as e:
        raise ConfigError(
            f"{WHERE}: field 'model': Ultralytics cannot build this YAML ({type(e).__name__}: {e})"
        ) from None


def from_checkpoint(path: str | Path) -> nn.Module:
    """Unpickle an Ultralytics ``.pt`` (``{"model": module, "ema": module?, ...}``); runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: field 'weights': file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # trust_pickle was given explicitly
    except Exception as e:
        raise CheckpointError(f"{path}: field 'weights': cannot unpickle ({type(e).__name__}: {e})") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"{path}: field 'weights': expected an Ultralytics checkpoint with a 'model' module"
        )
    model = model.float()
    model.requires_grad_(True)  # Ultralytics saves stripped checkpoints with requires_grad=False
    if hasattr(model.model[-1], "dfl") and hasattr(model.model[-1].dfl, "conv"):
        model.model[-1].dfl.requires_grad_(False)  # the DFL expectation kernel is fixed
    return model
