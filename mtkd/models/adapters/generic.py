"""Generic adapter: any ``nn.Module`` whose outputs are mapped to seg / det by config.

This is how users usually hold a teacher: a class in their own package plus a ``state_dict`` file. The config
names the class by import path and says where seg and det are in its output::

    adapter: generic
    target: yolop.models:YOLOP          # package.module:Class or factory function (attribute path after :)
    kwargs: {nc: 1}                      # constructor keyword arguments (JSON-like)
    state_dict: weights/yolop.pt         # loaded with torch.load(weights_only=True), strict
    state_dict_key: state_dict           # optional: take ckpt["state_dict"] from the loaded dict
    outputs: {det: 0, seg: 1}            # index / key / nested path ([0, "drive"]) into the module's output
    eval_outputs: {det: [0, 1]}          # optional override in eval mode (YOLOv5/YOLOP heads return (z, x))
    head: anchor                         # anchor | anchor_free (the one name mtkd uses; `det_kind` is read too)
    strides: [8, 16, 32]
    anchors: [[3,9,5,11,4,20], [7,18,6,39,12,31], [19,50,38,81,68,157]]   # per level, input pixels
    reg_max: 16                          # anchor_free only
    seg_activation: sigmoid              # logits | sigmoid | softmax: what the seg output is
    features: {p3: neck.2}               # optional short names for feature taps (module paths)
    freeze: [lane_head]                  # optional: module paths of branches whose outputs are not mapped
    input_mean: [0.485, 0.456, 0.406]    # optional normalization of the [0, 1] input (with input_std)
    input_std: [0.229, 0.224, 0.225]

Several segmentation tasks (YOLOP: drivable area and lane lines, each its own sigmoid head): the model is built
with ``seg_tasks`` (``build_model(cfg, det_names=..., seg_tasks={"drivable": [...], "lane": [...]})``, or a
``seg_tasks`` key in the config) and ``outputs`` maps each task by name, optionally with its own activation::

    outputs:
      det: 0
      drivable: {index: 1, activation: sigmoid}   # {index: path, activation: logits | sigmoid | softmax}
      lane: {index: 2, activation: sigmoid}       # a plain path uses seg_activation

A seg task that ``outputs`` does not map is not part of the model (``model.seg_tasks`` lists the mapped ones, in
``seg_tasks`` order); the forward pass then fills ``out.seg_tasks`` (``{task: [B, C_task, H, W] logits}``).

Detection layouts are recognised by rank (``det_layouts``): ``anchor`` heads give per level
``[B, na, H, W, 5 + nc]`` (YOLOv5 channel order: xywh, objectness, classes) or ``[B, na * (5 + nc), H, W]`` maps;
``anchor_free`` heads give an Ultralytics-style dict (``boxes [B, 4*reg_max, A]``, ``scores [B, nc, A]``,
``feats``) or per-level maps ``[B, 4*reg_max + nc, H, W]``.

Probability outputs are turned back into logits (``output_map.probs_to_logits``) so distillation sees logits.
Seg logits are returned at input resolution (bilinear upsampling when the module emits a smaller map).

This module holds ``GenericAdapter`` (its ``from_config`` / ``from_arch``), the import of the ``target`` and the
module-level ``build`` / ``from_arch`` that ``mtkd.models.build`` dispatches to.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import (
    InputNorm,
    check_head,
    check_rebuildable,
    describe,
    load_state_dict_file,
    resolve_names,
)
from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.adapters.det_layouts import (
    anchor_det_output,
    anchor_free_det_output,
    normalize_anchors,
)
from mtkd.models.adapters.output_map import (
    OutputPath,
    OutputRoute,
    check_activation,
    parse_outputs,
    probs_to_logits,
    select_output,
)
from mtkd.models.features import FeatureTaps
from mtkd.models.outputs import HEAD_KINDS, MultiTaskOutput
from mtkd.models.trust import TrustCode, require_trusted

_W = "generic adapter"
_CONFIG_KEYS = (
    "adapter", "target", "kwargs", "state_dict", "state_dict_key", "outputs", "eval_outputs", "det_kind",
    "strides", "anchors", "reg_max", "seg_activation", "features", "freeze", "input_mean", "input_std",
    "det_names", "seg_names", "seg_tasks", "head",
)  # fmt: skip


def import_target(target: str) -> Any:
    """Resolve ``"package.module:Attr.Sub"`` to the object; ``ConfigError`` naming the field otherwise."""
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(f"{_W}: field 'target' = {target!r}; expected 'package.module:Class'")
    mod_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or an error raised by the module's own import
        raise ConfigError(f"{_W}: field 'target' = {target!r}: cannot import {mod_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{_W}: field 'target' = {target!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _parse_routes(
    outputs: Any, eval_outputs: Any, seg_keys: list[str]
) -> tuple[dict[str, OutputRoute], dict[str, OutputRoute]]:
    """``outputs`` and ``eval_outputs`` (``output_map.parse_outputs``) as routes for train and eval mode: an
    ``eval_outputs`` entry replaces the path and, when it gives one, the activation of the same ``outputs`` entry."""
    hint = (
        " (seg tasks with other names need seg_tasks: {task: [class names]})"
        if seg_keys == ["seg"]
        else " (with several seg tasks each one is mapped by its name, not as 'seg')"
    )
    train = parse_outputs(outputs, field="outputs", allowed=["det", *seg_keys], where=_W, hint=hint)
    evals = parse_outputs(eval_outputs or {}, field="eval_outputs", allowed=list(train) or ["det"], where=_W)
    merged = {k: OutputRoute(r.path, r.activation or train[k].activation) for k, r in evals.items()}
    return train, {**train, **merged}


def _instantiate(target: str, kwargs: Mapping[str, Any]) -> nn.Module:
    cls = import_target(target)
    try:
        module = cls(**dict(kwargs))
    except Exception as e:
        raise ConfigError(
            f"{_W}: field 'kwargs' = {dict(kwargs)!r}: {target} could not be built with them "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"{_W}: field 'target' = {target!r} built a {type(module).__name__}, not an nn.Module"
        )
    return module


class GenericAdapter(MultiTaskAdapter):
    """Wraps any ``nn.Module``; its outputs are mapped to ``MultiTaskOutput`` by ``outputs``.

    Args:
        module: the wrapped model (``self.model``); ``module(images)`` returns a tensor, tuple/list or dict.
        det_names / seg_names: class names (required for each task that ``outputs`` maps).
        seg_tasks: instead of ``seg_names``, several named seg tasks ``{task: class names}``; ``outputs`` then maps
            each task by name (and not ``seg``).
        outputs: ``{"det": path, "seg": path}`` (either may be absent), path = index, key, or list of them; a seg
            entry may be ``{"index": path, "activation": ...}`` (its own ``seg_activation``). With ``seg_tasks``:
            ``{"det": path, task: path or {...}, ...}``, one entry per task of ``seg_tasks``.
        eval_outputs: paths used in eval mode instead (defaults to ``outputs``; same names as ``outputs``).
        head: ``"anchor"`` (needs ``anchors``) or ``"anchor_free"`` (needs ``reg_max``); with ``strides``.
        seg_activation: ``"logits" | "sigmoid" | "softmax"``: what a seg output holds unless its ``outputs``
            entry says otherwise; see ``probs_to_logits``. With a single-channel sigmoid, the task must have two
            classes (background, foreground).
        features: short name → module path inside ``module`` (``{"p3": "neck.2"}``); module paths work too.
        freeze: module paths inside ``module`` whose parameters are frozen (``requires_grad=False``): branches
            whose outputs are not mapped (e.g. YOLOP's lane head when ``seg`` is the drivable area) and so would
            never get a gradient.
        input_mean / input_std: optional normalization of the ``[0, 1]`` images before ``module``.
        target / kwargs: import path and kwargs that rebuild ``module``; required for ``arch()``.
    """

    adapter_name = "generic"
    adapter_label = _W
    config_keys = _CONFIG_KEYS
    supports_seg_tasks = True

    def __init__(
        self,
        module: nn.Module,
        *,
        det_names: Sequence[str] = (),
        seg_names: Sequence[str] = (),
        seg_tasks: Mapping[str, Sequence[str]] | None = None,
        outputs: Mapping[str, OutputPath | Mapping[str, Any]],
        eval_outputs: Mapping[str, OutputPath | Mapping[str, Any]] | None = None,
        head: str | None = None,
        strides: Sequence[int] = (),
        anchors: Any = None,
        reg_max: int | None = None,
        seg_activation: str = "logits",
        features: Mapping[str, str] | None = None,
        freeze: Sequence[str] = (),
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        target: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(det_names=det_names, seg_names=seg_names, seg_tasks=seg_tasks)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{_W}: expected an nn.Module, got {type(module).__name__}")
        self.seg_keys = list(self._seg_tasks) if self.multi_seg else ["seg"]  # seg outputs, in task order
        routes = _parse_routes(outputs, eval_outputs, self.seg_keys)
        if not outputs:
            raise ConfigError(f"{_W}: field 'outputs' maps neither 'det' nor 'seg'")
        self.seg_activation = check_activation(seg_activation, "seg_activation")
        for task in self.seg_keys:
            if task in outputs and not self._seg_tasks.get(task):
                what = "'seg_names' (or nc_seg)" if task == "seg" else f"'seg_tasks.{task}'"
                raise ConfigError(f"{_W}: 'outputs' maps {task!r}, so {what} is required")
        self.model = module
        self.outputs = dict(outputs)
        self.eval_outputs = {**self.outputs, **dict(eval_outputs or {})}
        self._routes, self._eval_routes = routes
        self.target, self.kwargs = target, dict(kwargs or {})
        self.norm = InputNorm(input_mean, input_std, where=_W)
        self.taps = FeatureTaps(self.model, dict(features or {}))
        self.freeze = [str(p) for p in freeze]
        for path in self.freeze:
            try:
                self.model.get_submodule(path).requires_grad_(False)
            except AttributeError:
                raise ConfigError(
                    f"{_W}: field 'freeze': {type(module).__name__} has no submodule {path!r}"
                ) from None
        self.head_kind: str | None = None
        self.strides: tuple[int, ...] = ()
        self.anchor_list: list[list[list[float]]] | None = None
        self.reg_max: int | None = None
        if "det" in self.outputs:
            self._init_det(head, strides, anchors, reg_max)

    def _init_det(self, head: str | None, strides: Sequence[int], anchors: Any, reg_max: int | None) -> None:
        if not self.det_names:
            raise ConfigError(f"{_W}: 'outputs' maps 'det', so 'det_names' (or nc_det) is required")
        if head not in HEAD_KINDS:
            raise ConfigError(f"{_W}: field 'head' = {head!r}; expected one of {HEAD_KINDS}")
        if not strides or not all(isinstance(s, int) and s > 0 for s in strides):
            raise ConfigError(f"{_W}: field 'strides' = {strides!r}; expected positive ints, one per level")
        self.head_kind, self.strides = head, tuple(strides)
        if head == "anchor":
            self.anchor_list = normalize_anchors(anchors, len(self.strides), where=_W)
            self.register_buffer("anchors", torch.tensor(self.anchor_list), persistent=False)  # [nl, na, 2]
        elif not isinstance(reg_max, int) or reg_max < 1:
            raise ConfigError(f"{_W}: field 'reg_max' = {reg_max!r}; anchor_free needs DFL bins (int >= 1)")
        else:
            self.reg_max = reg_max

    # ---------------------------------------------------------------- forward
    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:
        """images ``[B, 3, H, W]`` in [0, 1] → seg logits ``[B, C_seg, H, W]`` and raw det (module docstring)."""
        with self.taps.capture(features) as feats:
            out = self.model(self.norm(images))
        routes, key = (self._routes, "outputs") if self.training else (self._eval_routes, "eval_outputs")
        segs, det = {}, None
        for task in self.seg_keys:
            if task in routes:
                p = select_output(out, routes[task].path, field=f"{key}.{task}")
                segs[task] = self._seg(
                    p, images.shape[-2:], task, routes[task].activation or self.seg_activation
                )
        if "det" in routes:
            raw = select_output(out, routes["det"].path, field=f"{key}.det")
            where = f"{_W}: '{key}.det'"
            if self.head_kind == "anchor":
                det = anchor_det_output(
                    raw, strides=self.strides, anchors=self.anchors, nc=self.nc_det, where=where
                )
            else:
                det = anchor_free_det_output(
                    raw, strides=self.strides, reg_max=self.reg_max, nc=self.nc_det, where=where
                )
        return MultiTaskOutput.from_seg_outputs(segs, det=det, features=feats)

    def _seg(self, p: Any, size: Sequence[int], task: str, activation: str) -> Tensor:
        """Seg output ``p`` ``[B, C, h, w]`` of ``task`` → logits ``[B, nc_task, H, W]`` (``probs_to_logits``)."""
        if not isinstance(p, Tensor) or p.ndim != 4:
            raise ConfigError(f"{_W}: 'outputs.{task}' selects {describe(p)}; expected a [B, C, h, w] tensor")
        c, nc = p.shape[1], len(self._seg_tasks[task])
        binary = activation == "sigmoid" and c == 1
        if (2 if binary else c) != nc:
            names = "seg_names" if task == "seg" else f"seg_tasks.{task}"
            raise ConfigError(
                f"{_W}: {'seg' if task == 'seg' else repr(task)} output has {c} channels but {names} has {nc} classes"
                + (f" (a 1-channel sigmoid output needs 2 {names}: background, foreground)" if binary else "")
            )
        logits = probs_to_logits(p, activation)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    # ---------------------------------------------------------------- description
    def det_spec(self) -> DetSpec | None:
        if self.head_kind is None:
            return None
        anchors = None
        if self.anchor_list is not None:
            anchors = tuple(tuple((w, h) for w, h in level) for level in self.anchor_list)
        return DetSpec(self.head_kind, self.nc_det, self.strides, anchors=anchors, reg_max=self.reg_max)

    def feature_names(self) -> list[str]:
        return self.taps.names

    def arch(self) -> dict[str, Any]:
        """The build config minus ``state_dict`` (weights travel in the checkpoint). Needs ``target``."""
        if self.target is None:
            raise ConfigError(
                f"{_W} wrapping {type(self.model).__name__} was passed in from Python without 'target': it cannot "
                f"be rebuilt from a safe checkpoint. Give GenericAdapter(..., target='package.module:Class', "
                f"kwargs={{...}}) or build it from a config with 'target'"
            )
        check_rebuildable(
            self.model, lambda: _instantiate(self.target, self.kwargs), what=f"{_W} ({self.target})",
            hint="Make the class take its widths as constructor arguments and pass them in 'kwargs'.",
        )  # fmt: skip
        seg_key, seg_val = (
            ("seg_tasks", self.seg_tasks) if self.multi_seg else ("seg_names", list(self.seg_names))
        )
        arch: dict[str, Any] = {
            "adapter": self.adapter_name, "target": self.target, "kwargs": dict(self.kwargs),
            "outputs": dict(self.outputs), "seg_activation": self.seg_activation,
            "det_names": list(self.det_names), seg_key: seg_val, **self.norm.arch(),
        }  # fmt: skip
        if self.eval_outputs != self.outputs:
            arch["eval_outputs"] = dict(self.eval_outputs)
        if self.head_kind == "anchor":
            arch.update(head="anchor", strides=list(self.strides), anchors=self.anchor_list)
        elif self.head_kind == "anchor_free":
            arch.update(head="anchor_free", strides=list(self.strides), reg_max=self.reg_max)
        if self.taps.taps:
            arch["features"] = dict(self.taps.taps)
        if self.freeze:
            arch["freeze"] = list(self.freeze)
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
        seg_tasks: dict[str, list[str]] | None = None,
    ) -> GenericAdapter:
        """Build from a config dict (module docstring); loads ``state_dict`` when given. Class names/counts of a
        task that ``outputs`` does not map are ignored (so are the seg tasks it does not map)."""
        if "target" not in config:
            raise ConfigError(f"{_W}: field 'target' is required ('package.module:Class')")
        kwargs = config.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{_W}: field 'kwargs' = {kwargs!r}; expected a dict of constructor arguments")
        outputs = config.get("outputs")
        if not isinstance(outputs, Mapping):
            raise ConfigError(f"{_W}: field 'outputs' = {outputs!r}; expected e.g. {{det: 0, seg: 1}}")
        seg_keys = list(seg_tasks) if seg_tasks else ["seg"]
        _parse_routes(outputs, config.get("eval_outputs"), seg_keys)  # names checked before building anything
        module = _instantiate(config["target"], kwargs)
        if config.get("state_dict"):
            load_state_dict_file(module, config["state_dict"], config.get("state_dict_key"))
        det = resolve_names(det_names, nc_det, "det", _W) if "det" in outputs else []
        seg = resolve_names(seg_names, nc_seg, "seg", _W) if "seg" in outputs and not seg_tasks else []
        tasks = {t: n for t, n in (seg_tasks or {}).items() if t in outputs} or None
        if "det_kind" in config:  # the older name of `head` (configs and checkpoints before mtkd 0.2)
            if config.get("head") is not None and "det" in outputs:
                check_head(config["head"], config["det_kind"], _W)
            config = {**{k: v for k, v in config.items() if k != "det_kind"}, "head": config["det_kind"]}
        if "det" not in outputs:
            config = {k: v for k, v in config.items() if k != "head"}
        opts = {k: config[k] for k in ("eval_outputs", "head", "strides", "anchors", "reg_max", "seg_activation",
                                       "features", "freeze", "input_mean", "input_std") if k in config}  # fmt: skip
        return cls(
            module,
            det_names=det,
            seg_names=seg,
            seg_tasks=tasks,
            outputs=outputs,
            target=config["target"],
            kwargs=kwargs,
            **opts,
        )

    @classmethod
    def _from_arch(cls, arch: Mapping[str, Any], *, trust_code: TrustCode, where: str) -> GenericAdapter:
        """Inverse of ``arch()`` (no weights loaded; the checkpoint's state_dict follows).

        SECURITY: ``arch`` comes from a file, so its ``target`` is imported only when ``trust_code`` allows it
        (``mtkd.models.trust.require_trusted``); ``CheckpointError`` naming ``where`` and the path otherwise. A
        ``state_dict`` path in ``arch`` is never read (the weights travel in the checkpoint).
        """
        target = arch.get("target")
        if not isinstance(target, str) or ":" not in target:
            raise ConfigError(f"{_W} arch: field 'target' = {target!r}; expected 'package.module:Class'")
        require_trusted(target, trust_code, where)
        return cls.from_config({k: v for k, v in arch.items() if k != "state_dict"})


#: the protocol class ``mtkd.models.build`` may dispatch to
ADAPTER = GenericAdapter


def build(
    config: Mapping[str, Any],
    nc_det: int | None = None,
    nc_seg: int | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
) -> GenericAdapter:
    """``GenericAdapter.from_config`` (kept for ``mtkd.models.build``'s module dispatch)."""
    return GenericAdapter.from_config(config, nc_det, nc_seg, det_names, seg_names)


def from_arch(
    arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch"
) -> GenericAdapter:
    """``GenericAdapter.from_arch``: imports the arch's ``target`` only when ``trust_code`` allows it."""
    return GenericAdapter.from_arch(arch, trust_code=trust_code, where=where)
