"""Ultralytics adapter: an Ultralytics detection model (+ our ``SegHead`` on its neck) or semantic model.

Config::

    adapter: ultralytics
    model: yolov8n.yaml          # a model YAML bundled with Ultralytics, a YAML path, or a YAML dict
    # weights: yolov8n.pt        # ...or an existing Ultralytics checkpoint (pickled: needs trust_pickle: true)
    # trust_pickle: true
    seg_head: {lat: 32, fuse: 64, conv: 64}   # optional widths of the seg head added on P3/P4 (detect task)

- **detect** task (last layer ``Detect``/``v10Detect``): ``det`` is the ``Detect`` head's raw one-to-many output
  (``forward_head``: ``boxes [B, 4*reg_max, A]`` DFL logits, ``scores [B, nc, A]`` class logits, ``feats``) in
  train and eval mode alike (``Detect.forward`` itself decodes boxes in eval mode, so the adapter runs the layers
  and calls ``forward_head`` directly). End-to-end heads (YOLO26, YOLOv10) also carry a one-to-one branch: mtkd
  does not use it (decoding is NMS on the one-to-many output), so its parameters are frozen. When ``seg_names``
  is non-empty a ``mtkd.models.heads.SegHead`` is attached to the ``Detect`` inputs P3 and P4.
- **semantic** task (last layer ``SemanticSegment``): seg-only; ``seg`` is its main classifier's logits at
  stride 8 (the auxiliary P4 classifier, used only by Ultralytics' training loss, is frozen).

Seg logits are upsampled to the input resolution. Feature taps: ``p3``, ``p4``, ``p5`` = the head's inputs (any
module path, e.g. ``model.model.9``, works too).

``arch()`` is the model's YAML dict (Ultralytics keeps it as ``model.yaml``) plus names and seg-head widths. A
pruned Ultralytics model no longer matches its YAML (Ultralytics issue #7498), so ``arch()`` raises
``CheckpointError`` for it. Models with ``C2f``/``C3k2`` blocks split channels and are not prunable by
Torch-Pruning anyway (see shared NOTES.md); prune the built-in ``yolo_mt`` family instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.errors import CheckpointError, ConfigError
from mtkd.models.adapters._common import check_head, check_rebuildable, resolve_names
from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.adapters.ultralytics_yaml import validate_model_yaml
from mtkd.models.features import FeatureTaps
from mtkd.models.heads import SegHead
from mtkd.models.outputs import DetOutput, MultiTaskOutput
from mtkd.models.trust import TrustCode
from mtkd.utils.env import quiet_ultralytics

_CONFIG_KEYS = ("adapter", "model", "weights", "trust_pickle", "seg_head", "det_names", "seg_names", "head")
_ARCH_KEYS = ("adapter", "yaml", "det_names", "seg_names", "seg_head")
_WHERE = "ultralytics adapter"


def _head_kind(model: nn.Module) -> str:
    from ultralytics.nn.modules.head import Detect, SemanticSegment, v10Detect

    head = model.model[-1] if hasattr(model, "model") and isinstance(model.model, nn.Sequential) else None
    if type(head) in (Detect, v10Detect):
        return "detect"
    if type(head) is SemanticSegment:
        return "semantic"
    raise ConfigError(
        f"{_WHERE}: unsupported Ultralytics model {type(model).__name__} with head {type(head).__name__}; "
        f"expected a detection model (Detect head) or a semantic model (SemanticSegment head)"
    )


class UltralyticsAdapter(MultiTaskAdapter):
    """Wraps an Ultralytics ``DetectionModel`` or ``SemanticSegmentationModel``.

    Args:
        model: the Ultralytics model (its ``model.model`` is the ``nn.Sequential`` of layers).
        det_names: detection class names (detect task; must match ``Detect.nc``).
        seg_names: seg class names; detect task: adds a ``SegHead`` on P3/P4 when non-empty; semantic task:
            must match ``SemanticSegment.nc``.
        seg_head: ``SegHead`` widths (``lat``, ``fuse``, ``conv``); defaults from the neck widths.

    ``forward(images [B, 3, H, W])``: H, W multiples of the model's largest stride (32).
    """

    adapter_name = "ultralytics"
    adapter_label = _WHERE
    config_keys = _CONFIG_KEYS
    arch_keys = _ARCH_KEYS

    def __init__(
        self,
        model: nn.Module,
        *,
        det_names: Sequence[str] = (),
        seg_names: Sequence[str] = (),
        seg_head: Mapping[str, int] | None = None,
    ) -> None:
        self.task = _head_kind(model)
        head = model.model[-1]
        if self.task == "semantic" and det_names:
            raise ConfigError(f"{_WHERE}: a semantic model has no detection head, but det_names were given")
        super().__init__(det_names=det_names, seg_names=seg_names)
        expected = self.nc_det if self.task == "detect" else self.nc_seg
        if head.nc != expected:
            task = "det" if self.task == "detect" else "seg"
            raise ConfigError(
                f"{_WHERE}: the model's {type(head).__name__} head has {head.nc} classes but {task}_names has {expected}"
            )
        self.model = model
        idx = [
            len(self.layers) - 2 if j == -1 else j for j in ([head.f] if isinstance(head.f, int) else head.f)
        ]
        self._taps = {f"p{3 + i}": f"model.model.{j}" for i, j in enumerate(idx)}
        if self.task == "detect":
            ch = [int(s[0].conv.in_channels) for s in head.cv2]
            self.strides = tuple(int(s) for s in head.stride.tolist())
            self.seg = SegHead(self.nc_seg, ch[:2], **dict(seg_head or {})) if self.nc_seg else None
            frozen = [getattr(head, n, None) for n in ("one2one_cv2", "one2one_cv3")]
        else:
            if seg_head:
                raise ConfigError(
                    f"{_WHERE}: 'seg_head' applies to detection models; a semantic model has its own"
                )
            self.strides, self.seg = (), None
            frozen = [head.aux_head]
        for m in frozen:
            if m is not None:
                m.requires_grad_(False)

    @property
    def layers(self) -> nn.Sequential:
        """The Ultralytics layers (``model.model``; a property, so the state_dict holds them once)."""
        return self.model.model

    # ---------------------------------------------------------------- forward
    def _neck(self, images: Tensor) -> list[Tensor]:
        """Run every layer but the head (as Ultralytics' ``_predict_once`` does); return the head's inputs."""
        y: list[Tensor | None] = []
        x: Any = images
        save = set(self.model.save)
        for m in self.layers[:-1]:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in save else None)
        f = self.layers[-1].f
        return [x if j == -1 else y[j] for j in ([f] if isinstance(f, int) else f)]

    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:
        """images ``[B, 3, H, W]`` → seg logits ``[B, C_seg, H, W]``, raw anchor-free ``DetOutput``."""
        head = self.layers[-1]
        size = tuple(images.shape[-2:])
        with FeatureTaps(self, self._taps).capture(features) as feats:
            xs = self._neck(images)
            det = seg = None
            if self.task == "detect":
                raw = head.forward_head(xs, box_head=head.cv2, cls_head=head.cv3)  # raw in train and eval
                det = DetOutput(
                    raw=raw, box=raw["boxes"].transpose(1, 2), obj=None, cls=raw["scores"].transpose(1, 2),
                    kind="anchor_free", strides=self.strides, reg_max=int(head.reg_max),
                )  # fmt: skip
                if self.seg is not None:
                    seg = self.seg(xs[:2], size=size)
            else:
                seg = F.interpolate(head.classifier(xs[0]), size=size, mode="bilinear", align_corners=False)
        return MultiTaskOutput(seg=seg, det=det, features=feats)

    # ---------------------------------------------------------------- description
    def det_spec(self) -> DetSpec | None:
        if self.task != "detect":
            return None
        return DetSpec(kind="anchor_free", num_classes=self.nc_det, strides=self.strides,
                       reg_max=int(self.layers[-1].reg_max))  # fmt: skip

    def feature_names(self) -> list[str]:
        return list(self._taps)

    def ignored_layers(self) -> list[nn.Module]:
        """Output layers whose widths are fixed (for Torch-Pruning; C2f models are not prunable anyway)."""
        head = self.layers[-1]
        if self.task == "detect":
            out = [s[-1] for s in head.cv2] + [s[-1] for s in head.cv3] + [head.dfl]
            return out + (self.seg.ignored_layers() if self.seg is not None else [])
        return [head.classifier[-1]] + ([head.aux_head[-1]] if head.aux_head is not None else [])

    def arch(self) -> dict[str, Any]:
        """``{"adapter", "yaml", "det_names", "seg_names", "seg_head"}``; ``CheckpointError`` when pruned."""
        arch = {
            "adapter": self.adapter_name,
            "yaml": copy.deepcopy(dict(self.model.yaml)),
            "det_names": list(self.det_names),
            "seg_names": list(self.seg_names),
            "seg_head": self.seg.widths() if self.seg is not None else None,
        }
        check_rebuildable(
            self, lambda: _reference(arch), what=f"{_WHERE} ({arch['yaml'].get('yaml_file', 'model')})",
            hint="Pruned Ultralytics models cannot be described by a model YAML; distill into the built-in "
            "yolo_mt family (prunable) instead, or keep this model as an unpruned teacher.",
        )  # fmt: skip
        return arch

    # ---------------------------------------------------------------- construction (base.MultiTaskAdapter)
    @classmethod
    def _from_config(
        cls,
        config: Mapping[str, Any],
        *,
        nc_det: int | None,
        nc_seg: int | None,
        det_names: Sequence[str] | None,
        seg_names: Sequence[str] | None,
    ) -> UltralyticsAdapter:
        """Build from a config dict (module docstring). ``nc_det``/``nc_seg`` set the head's classes for a YAML."""
        if ("model" in config) == ("weights" in config):
            raise ConfigError(
                f"{_WHERE}: give exactly one of 'model' (a model YAML) or 'weights' (an Ultralytics .pt)"
            )
        if "weights" in config:
            if config.get("trust_pickle") is not True:
                raise ConfigError(
                    f"{_WHERE}: field 'weights' = {config['weights']!r} is a pickled Ultralytics checkpoint; loading it "
                    f"runs code from the file: set trust_pickle: true only for files you trust"
                )
            model = _from_checkpoint(config["weights"])
            task, nc_model = _head_kind(model), int(model.model[-1].nc)
            nc_want = nc_det if task == "detect" else nc_seg
            if nc_want is not None and nc_want != nc_model:
                raise ConfigError(
                    f"{config['weights']}: field 'weights': the checkpoint's head has {nc_model} classes, but "
                    f"nc_{'det' if task == 'detect' else 'seg'} = {nc_want}"
                )
            names = getattr(model, "names", None)
            if (
                task == "detect"
                and det_names is None
                and isinstance(names, Mapping)
                and len(names) == nc_model
            ):
                det_names = [str(names[i]) for i in range(nc_model)]
        else:
            cfg = _load_yaml(config["model"])
            from ultralytics.nn.tasks import guess_model_task

            task = guess_model_task(cfg)
            names = det_names if task == "detect" else seg_names
            nc_want = (nc_det if task == "detect" else nc_seg) or (len(names) if names else None)
            model = _from_yaml(cfg, nc_want)
            nc_model = int(model.model[-1].nc)
        check_head(config.get("head"), "anchor_free" if task == "detect" else None, _WHERE)
        if task == "detect":
            det = resolve_names(det_names, nc_model, "det", _WHERE)
            seg = resolve_names(seg_names, nc_seg, "seg", _WHERE)
        else:  # seg-only: det classes of the data (if any) do not apply; check_compatible reports a det mismatch
            det, seg = [], resolve_names(seg_names, nc_model, "seg", _WHERE)
        return cls(model, det_names=det, seg_names=seg, seg_head=config.get("seg_head"))

    @classmethod
    def _from_arch(cls, arch: Mapping[str, Any], *, trust_code: TrustCode, where: str) -> UltralyticsAdapter:
        """Inverse of ``arch()`` (random weights; the checkpoint's state_dict follows).

        SECURITY: the arch's YAML passes ``validate_model_yaml`` before Ultralytics sees it, so it never runs
        code; there is nothing ``trust_code`` could allow here (accepted for the common signature).
        """
        if not isinstance(arch.get("yaml"), Mapping):
            raise ConfigError(f"{_WHERE} arch: field 'yaml' must be the model YAML dict")
        cfg = copy.deepcopy(dict(arch["yaml"]))
        model = _from_yaml(cfg, cfg.get("nc"), f"{_WHERE} arch field 'yaml'")
        return cls(
            model, det_names=arch.get("det_names") or (), seg_names=arch.get("seg_names") or (),
            seg_head=arch.get("seg_head"),
        )  # fmt: skip


# -------------------------------------------------------------------------------------------------------- build
def _reference(arch: Mapping[str, Any]) -> nn.Module:
    """A module with the adapter's state_dict layout built from ``arch`` by Ultralytics' ``parse_model`` (no
    stride-probing forward pass, so it also builds on the ``meta`` device): only its tensor shapes are used."""
    from ultralytics.nn.tasks import parse_model

    cfg = copy.deepcopy(dict(arch["yaml"]))
    validate_model_yaml(cfg, f"{_WHERE} arch field 'yaml'")
    ref = nn.Module()
    ref.model = nn.Module()
    ref.model.model, _ = parse_model(copy.deepcopy(cfg), ch=cfg.get("channels", 3), verbose=False)
    if arch.get("seg_head") is not None:
        ch = [int(s[0].conv.in_channels) for s in ref.model.model[-1].cv2]
        ref.seg = SegHead(len(arch.get("seg_names") or ()), ch[:2], **arch["seg_head"])
    return ref


def _load_yaml(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    from ultralytics.nn.tasks import yaml_model_load

    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    try:
        return yaml_model_load(spec)
    except Exception as e:  # FileNotFoundError from check_yaml, YAML errors
        raise ConfigError(
            f"{_WHERE}: field 'model' = {spec!r}: not a readable model YAML ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); use a bundled name like 'yolov8n.yaml' or a file path"
        ) from None


def _from_yaml(cfg: dict[str, Any], nc: int | None, where: str = f"{_WHERE}: field 'model'") -> nn.Module:
    """Build an Ultralytics model from a YAML dict after ``validate_model_yaml`` (nothing in it is evaluated)."""
    from ultralytics.nn.tasks import DetectionModel, SemanticSegmentationModel, guess_model_task

    validate_model_yaml(cfg, where)
    task = guess_model_task(cfg)
    if task not in ("detect", "semantic"):
        raise ConfigError(
            f"{_WHERE}: field 'model': a {task!r} model YAML; expected a detect or semantic model"
        )
    cls = DetectionModel if task == "detect" else SemanticSegmentationModel
    try:
        with quiet_ultralytics():  # no "Overriding model.yaml nc=..." in library use
            return cls(cfg, nc=nc or None, verbose=False)
    except Exception as e:
        raise ConfigError(
            f"{_WHERE}: field 'model': Ultralytics cannot build this YAML ({type(e).__name__}: {e})"
        ) from None


def _from_checkpoint(path: str | Path) -> nn.Module:
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


#: the protocol class ``mtkd.models.build`` may dispatch to
ADAPTER = UltralyticsAdapter


def build(
    config: Mapping[str, Any],
    nc_det: int | None = None,
    nc_seg: int | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
) -> UltralyticsAdapter:
    """``UltralyticsAdapter.from_config`` (kept for ``mtkd.models.build``'s module dispatch)."""
    return UltralyticsAdapter.from_config(config, nc_det, nc_seg, det_names, seg_names)


def from_arch(
    arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch"
) -> UltralyticsAdapter:
    """``UltralyticsAdapter.from_arch``: the arch's YAML is validated before Ultralytics sees it."""
    return UltralyticsAdapter.from_arch(arch, trust_code=trust_code, where=where)
