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

Seg logits are upsampled to the input resolution. Feature taps are named by stride: ``p{log2(stride)}`` for each
of the head's inputs (``p3``, ``p4``, ``p5``; ``p2`` for a stride-4 input of a P2 model; any module path, e.g.
``model.model.9``, works too).

**Pruning and safe checkpoints of pruned models.** ``pruning()`` (used by ``mtkd.prune.prune_model``) replaces the
channel-splitting blocks (``C2f``, ``C3k2``, ``C2PSA``, ...) by split-free equivalents with the same outputs
(``ultralytics_blocks``) so Torch-Pruning can follow the graph, and ``pruning_outputs`` exposes every branch to
its tracer (the one-to-one head of end-to-end models, the semantic head's auxiliary classifier), so those are
pruned consistently with the neck. ``ignored_layers()`` keeps the output convolutions (boxes, classes, DFL, both
branches, the seg classifier) and the multi-head ``Attention`` modules (their per-head q/k/v split) whole.

``arch()`` is the model's YAML dict (Ultralytics keeps it as ``model.yaml``) plus names, seg-head widths and, for
a converted or pruned model, ``split_free`` (converted block paths) and ``widths`` (per-layer channel widths that
differ from what the YAML builds; ``ultralytics_arch``), so a pruned model round-trips through a safe checkpoint.
This also describes Torch-Pruning's own ``C2f_v2`` models (same ``cv0``/``cv1``/``cv2``/``m`` layout).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import check_head, check_rebuildable, resolve_names
from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.adapters.ultralytics_arch import read_widths
from mtkd.models.adapters.ultralytics_blocks import (
    attention_modules,
    make_split_free,
    split_free_paths,
    unsupported_blocks,
)
from mtkd.models.adapters.ultralytics_build import WHERE as _WHERE
from mtkd.models.adapters.ultralytics_build import (
    apply_arch_layout,
    from_checkpoint,
    from_yaml,
    load_yaml,
    reference,
    tap_names,
)
from mtkd.models.features import FeatureTaps
from mtkd.models.heads import SegHead
from mtkd.models.outputs import DetOutput, MultiTaskOutput
from mtkd.models.trust import TrustCode

_CONFIG_KEYS = ("adapter", "model", "weights", "trust_pickle", "seg_head", "det_names", "seg_names", "head")
_ARCH_KEYS = ("adapter", "yaml", "det_names", "seg_names", "seg_head", "split_free", "widths")


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
    supports_seg_head_resolution = True
    #: the head kind comes from the model (``Detect``: anchor_free); ``build_model(head=...)`` does not apply
    head_from_model = True

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
        self._taps = {
            name: f"model.model.{j}" for name, j in zip(tap_names(model, head, idx), idx, strict=True)
        }
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
        self._frozen = [m for m in frozen if m is not None]
        for m in self._frozen:
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

    def forward(
        self, images: Tensor, features: Sequence[str] = (), *, seg_upsample: bool = True
    ) -> MultiTaskOutput:
        """images ``[B, 3, H, W]`` → seg logits ``[B, C_seg, H, W]`` (with ``seg_upsample=False``: the head's
        ``[B, C_seg, H/8, W/8]``, ``supports_seg_head_resolution``), raw anchor-free ``DetOutput``."""
        head = self.layers[-1]
        size = tuple(images.shape[-2:])
        with FeatureTaps(self, self._taps).capture(features) as feats:
            xs = self._neck(images)
            det = seg = low = None
            if self.task == "detect":
                raw = head.forward_head(xs, box_head=head.cv2, cls_head=head.cv3)  # raw in train and eval
                det = DetOutput(
                    raw=raw, box=raw["boxes"].transpose(1, 2), obj=None, cls=raw["scores"].transpose(1, 2),
                    kind="anchor_free", strides=self.strides, reg_max=int(head.reg_max),
                )  # fmt: skip
                if self.seg is not None and seg_upsample:
                    seg, low = self.seg.with_head_logits(xs[:2], size=size)
                elif self.seg is not None:
                    seg = low = self.seg.head_logits(xs[:2])
            else:
                low = head.classifier(xs[0])
                seg = (
                    F.interpolate(low, size=size, mode="bilinear", align_corners=False)
                    if seg_upsample
                    else low
                )
        lows = {"seg": low} if seg is not None else {}
        return MultiTaskOutput(seg=seg, det=det, features=feats, seg_head_logits=lows)

    # ---------------------------------------------------------------- pruning
    @contextlib.contextmanager
    def pruning(self) -> Iterator[None]:
        """Make the model prunable for the block: split-free blocks (permanent; same outputs) and the frozen
        branches (one-to-one head, semantic aux classifier) trainable, so Taylor importance sees their gradients.
        ``ConfigError`` (before any change) for blocks that split channels and have no split-free equivalent."""
        bad = unsupported_blocks(self)
        if bad:
            name = self.model.yaml.get("yaml_file", type(self.model).__name__)
            raise ConfigError(
                f"prune: {name} has blocks that split channels and have no split-free equivalent in mtkd "
                f"({', '.join(bad)}); Torch-Pruning cannot follow them (tested families: YOLOv5u/v8/v10/11/26)"
            )
        make_split_free(self)
        frozen = getattr(self, "_frozen", [])  # (absent from adapters pickled by older mtkd versions)
        for m in frozen:
            m.requires_grad_(True)
        try:
            yield
        finally:
            for m in frozen:  # pruning replaced their parameters: freeze the modules again
                m.requires_grad_(False)

    def pruning_outputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """Every output branch for Torch-Pruning's tracer: ``forward``'s flat outputs plus the branches it skips
        (the one-to-one head of end-to-end models: boxes, scores; the semantic head's aux classifier), so their
        input channels are pruned together with the neck."""
        head, xs = self.layers[-1], self._neck(images)
        if self.task == "semantic":
            aux = [head.aux_head(xs[1])] if head.aux_head is not None else []
            return (head.classifier(xs[0]), *aux)
        outs = [self.seg(xs[:2], size=tuple(images.shape[-2:]))] if self.seg is not None else []
        branches = [(head.cv2, head.cv3)]
        if getattr(head, "one2one_cv2", None) is not None:
            branches.append((head.one2one_cv2, head.one2one_cv3))
        for box, cls in branches:
            raw = head.forward_head(xs, box_head=box, cls_head=cls)
            outs += [raw["boxes"], raw["scores"]]
        return tuple(outs)

    # ---------------------------------------------------------------- description
    def det_spec(self) -> DetSpec | None:
        if self.task != "detect":
            return None
        return DetSpec(kind="anchor_free", num_classes=self.nc_det, strides=self.strides,
                       reg_max=int(self.layers[-1].reg_max))  # fmt: skip

    def feature_names(self) -> list[str]:
        return list(self._taps)

    def ignored_layers(self) -> list[nn.Module]:
        """Layers whose widths Torch-Pruning must keep: every output convolution (boxes, classes, DFL, of both
        branches of end-to-end heads; the seg classifiers) and the multi-head ``Attention`` modules."""
        head = self.layers[-1]
        if self.task == "detect":
            heads = [head.cv2, head.cv3] + [getattr(head, n, None) for n in ("one2one_cv2", "one2one_cv3")]
            out = [s[-1] for h in heads if h is not None for s in h] + [head.dfl]
            out += self.seg.ignored_layers() if self.seg is not None else []
        else:
            out = [head.classifier[-1]] + ([head.aux_head[-1]] if head.aux_head is not None else [])
        return out + attention_modules(self)

    def arch(self) -> dict[str, Any]:
        """``{"adapter", "yaml", "det_names", "seg_names", "seg_head"}`` (+ ``split_free``, ``widths`` for a
        converted or pruned model; module docstring). ``CheckpointError`` when that cannot rebuild the model."""
        arch: dict[str, Any] = {
            "adapter": self.adapter_name,
            "yaml": copy.deepcopy(dict(self.model.yaml)),
            "det_names": list(self.det_names),
            "seg_names": list(self.seg_names),
            "seg_head": self.seg.widths() if self.seg is not None else None,
        }
        split_free = split_free_paths(self)
        if split_free:
            arch["split_free"] = split_free
        key = (hash(tuple((k, tuple(v.shape)) for k, v in self.state_dict().items())), tuple(split_free))
        cached = getattr(self, "_mtkd_widths", None)
        if cached is None or cached[0] != key:
            with torch.device("meta"):
                cached = (key, read_widths(self, reference(arch)))
            self._mtkd_widths = cached
        if cached[1]:
            arch["widths"] = copy.deepcopy(cached[1])
        check_rebuildable(
            self, lambda: reference(arch), what=f"{_WHERE} ({arch['yaml'].get('yaml_file', 'model')})",
            hint="Only channel widths of Conv2d/BatchNorm2d/Linear layers (and split-free blocks) can differ "
            "from the model YAML.",
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
            model = from_checkpoint(config["weights"])
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
            cfg = load_yaml(config["model"])
            from ultralytics.nn.tasks import guess_model_task

            task = guess_model_task(cfg)
            names = det_names if task == "detect" else seg_names
            nc_want = (nc_det if task == "detect" else nc_seg) or (len(names) if names else None)
            model = from_yaml(cfg, nc_want)
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
        model = from_yaml(cfg, cfg.get("nc"), f"{_WHERE} arch field 'yaml'")
        adapter = cls(
            model, det_names=arch.get("det_names") or (), seg_names=arch.get("seg_names") or (),
            seg_head=arch.get("seg_head"),
        )  # fmt: skip
        apply_arch_layout(adapter, arch, f"{where}: {_WHERE} arch")
        return adapter


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
