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
    det_kind: anchor                     # anchor | anchor_free
    strides: [8, 16, 32]
    anchors: [[3,9,5,11,4,20], [7,18,6,39,12,31], [19,50,38,81,68,157]]   # per level, input pixels
    reg_max: 16                          # anchor_free only
    seg_activation: sigmoid              # logits | sigmoid | softmax: what the seg output is
    features: {p3: neck.2}               # optional short names for feature taps (module paths)
    freeze: [lane_head]                  # optional: module paths of branches whose outputs are not mapped
    input_mean: [0.485, 0.456, 0.406]    # optional normalization of the [0, 1] input (with input_std)
    input_std: [0.229, 0.224, 0.225]

Detection layouts are recognised by rank: ``anchor`` heads give per level ``[B, na, H, W, 5 + nc]`` (YOLOv5
channel order: xywh, objectness, classes) or ``[B, na * (5 + nc), H, W]`` maps; ``anchor_free`` heads give an
Ultralytics-style dict (``boxes [B, 4*reg_max, A]``, ``scores [B, nc, A]``, ``feats``) or per-level
maps ``[B, 4*reg_max + nc, H, W]``.

Probability outputs are turned back into logits (see ``probs_to_logits``) so distillation sees logits.
Seg logits are returned at input resolution (bilinear upsampling when the module emits a smaller map).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.errors import CheckpointError, ConfigError
from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.features import FeatureTaps
from mtkd.models.outputs import DetOutput, MultiTaskOutput
from mtkd.models.trust import TrustCode, require_trusted
from mtkd.utils.suggest import did_you_mean

SEG_ACTIVATIONS = ("logits", "sigmoid", "softmax")
DET_KINDS = ("anchor", "anchor_free")
PROB_EPS = 1e-6
OutputPath = int | str | Sequence[int | str]

_W = "generic adapter"
_CONFIG_KEYS = (
    "adapter", "target", "kwargs", "state_dict", "state_dict_key", "outputs", "eval_outputs", "det_kind",
    "strides", "anchors", "reg_max", "seg_activation", "features", "freeze", "input_mean", "input_std",
    "det_names", "seg_names", "head",
)  # fmt: skip


def probs_to_logits(p: Tensor, activation: str, eps: float = PROB_EPS) -> Tensor:
    """Turn a seg head's probabilities ``[B, C, h, w]`` back into logits.

    - ``"logits"``: returned unchanged.
    - ``"softmax"``: ``log(clamp(p, eps))``; ``softmax`` of the result gives back ``p`` (rows sum to 1).
    - ``"sigmoid"`` with ``C == 1`` (binary foreground map): two-class logits ``[log(1 - p), log(p)]``
      (clamped to ``[eps, 1 - eps]``), ``[B, 2, h, w]``; ``softmax`` of the result gives back ``[1 - p, p]``.
    - ``"sigmoid"`` with ``C > 1`` (independent per-channel sigmoids, e.g. YOLOP's 2-channel drivable-area and
      lane heads): ``logit(clamp(p, eps, 1 - eps))``; ``sigmoid`` of the result gives back ``p`` and the argmax
      over channels is unchanged.
    """
    if activation == "logits":
        return p
    if activation == "softmax":
        return p.float().clamp_min(eps).log()
    if activation == "sigmoid":
        q = p.float().clamp(eps, 1.0 - eps)
        if q.shape[1] == 1:
            return torch.cat([torch.log1p(-q), q.log()], dim=1)
        return torch.logit(q)
    raise ConfigError(f"{_W}: field 'seg_activation' = {activation!r}; expected one of {SEG_ACTIVATIONS}")


def select_output(out: Any, path: OutputPath, *, field: str) -> Any:
    """Follow ``path`` (an index, a key, or a list of them) into a module's output."""
    steps = [path] if isinstance(path, (int, str)) else list(path)
    node = out
    for depth, step in enumerate(steps):
        try:
            node = node[step]
        except (IndexError, KeyError, TypeError):
            have = f" with keys {list(node)}" if isinstance(node, Mapping) else ""
            raise ConfigError(
                f"{_W}: field '{field}' = {path!r}: step {depth} ({step!r}) not found in the module output "
                f"({_describe(node)}{have})"
            ) from None
    return node


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


def load_state_dict_file(module: nn.Module, path: str | Path, key: str | None = None) -> None:
    """Load a ``state_dict`` file into ``module`` strictly; ``CheckpointError`` naming the file and the mismatch."""
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


def _normalize_anchors(anchors: Any, n_levels: int) -> list[list[list[float]]]:
    """YOLOv5-style ``[[w,h,w,h,...], ...]`` or nested ``[[[w,h], ...], ...]`` → ``[nl][na][2]`` floats."""
    bad = ConfigError(
        f"{_W}: field 'anchors' = {anchors!r}; expected one list per level ({n_levels} levels, as "
        f"'strides') of (w, h) pairs in input pixels, e.g. [[10,13, 16,30, 33,23], ...]"
    )
    if not isinstance(anchors, Sequence) or len(anchors) != n_levels:
        raise bad
    out = []
    for level in anchors:
        if not isinstance(level, Sequence) or not level:
            raise bad
        flat = [float(v) for pair in level for v in (pair if isinstance(pair, Sequence) else [pair])]
        if len(flat) % 2:
            raise bad
        out.append([[flat[i], flat[i + 1]] for i in range(0, len(flat), 2)])
    if len({len(level) for level in out}) != 1:
        raise bad
    return out


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the non-native adapters (ultralytics, smp, composite import them from here).


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


def check_head(head: Any, kind: str | None, where: str) -> None:
    """``build_model(..., head=...)`` puts ``head`` into dict configs; for adapters whose head kind is fixed by the
    model, it must agree (``kind`` is ``None`` for seg-only models, where it does not apply)."""
    if head is not None and kind is not None and head != kind:
        raise ConfigError(f"{where}: field 'head' = {head!r}, but this model's detection head is {kind!r}")


def check_keys(config: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Strict config: unknown keys raise ``ConfigError`` with a did-you-mean suggestion."""
    for key in config:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"; allowed: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown field {key!r}{hint}")


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


class InputNorm(nn.Module):
    """Optional per-channel input normalization ``(x - mean) / std`` of ``[B, 3, H, W]`` images in [0, 1]
    (e.g. ImageNet statistics for a teacher trained with them); identity when both are ``None``."""

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
        return (x - self.mean) / self.std if self.enabled else x

    def arch(self) -> dict[str, list[float]]:
        if not self.enabled:
            return {}
        return {"input_mean": self.mean.flatten().tolist(), "input_std": self.std.flatten().tolist()}


def _as_levels(raw: Any, *, n_levels: int, where: str) -> list[Tensor]:
    if not isinstance(raw, (list, tuple)) or not all(isinstance(t, Tensor) for t in raw):
        raise ConfigError(
            f"{where} selects {_describe(raw)}; expected a list of per-level tensors (heads that return "
            f"(decoded, raw) in eval mode, like YOLOv5/YOLOP's, need 'eval_outputs', e.g. {{det: [0, 1]}})"
        )
    if len(raw) != n_levels:
        raise ConfigError(f"{where} has {len(raw)} levels but 'strides' lists {n_levels}")
    return list(raw)


def anchor_det_output(raw: Any, *, strides: Sequence[int], anchors: Tensor, nc: int, where: str) -> DetOutput:
    """``DetOutput`` of a YOLOv5/YOLOP anchor head.

    raw: per level ``[B, na, H, W, 5 + nc]`` or ``[B, na * (5 + nc), H, W]`` (channels: xywh, obj, classes);
    anchors: ``[nl, na, 2]`` pixels. ``DetOutput.raw`` is always the 5-D per-level list; the flat view is
    ``box [B, A, 4]``, ``obj [B, A]``, ``cls [B, A, nc]`` with ``A = sum(na * H * W)`` (level, anchor, y, x order).
    """
    na, no = int(anchors.shape[1]), 5 + nc
    levels = []
    for i, t in enumerate(_as_levels(raw, n_levels=len(strides), where=where)):
        if t.ndim == 4 and t.shape[1] == na * no:
            b, _, h, w = t.shape
            t = t.view(b, na, no, h, w).permute(0, 1, 3, 4, 2)
        if t.ndim != 5 or t.shape[1] != na or t.shape[-1] != no:
            raise ConfigError(
                f"{where}: level {i} has shape {list(t.shape)}; expected [B, na={na}, H, W, 5 + nc_det={no}] "
                f"or [B, na * (5 + nc_det)={na * no}, H, W] (check 'anchors' and det_names)"
            )
        levels.append(t)
    return DetOutput.from_anchor_levels(levels, strides=tuple(strides), anchors=anchors)


def anchor_free_det_output(
    raw: Any, *, strides: Sequence[int], reg_max: int, nc: int, where: str
) -> DetOutput:
    """``DetOutput`` of an Ultralytics-style anchor-free (DFL) head.

    raw: dict ``{"boxes": [B, 4*reg_max, A], "scores": [B, nc, A], "feats": per-level maps}`` or per-level maps
    ``[B, 4*reg_max + nc, H, W]``. View: ``box [B, A, 4*reg_max]``, ``obj None``, ``cls [B, A, nc]``.
    """
    nb = 4 * reg_max
    if not isinstance(raw, Mapping):
        maps = _as_levels(raw, n_levels=len(strides), where=where)
        for i, m in enumerate(maps):
            if m.ndim != 4 or m.shape[1] != nb + nc:
                raise ConfigError(f"{where}: level {i} has shape {list(m.shape)}; expected [B, 4*reg_max + nc_det="
                                  f"{nb + nc}, H, W]")  # fmt: skip
        b = maps[0].shape[0]
        raw = {"boxes": torch.cat([m[:, :nb].reshape(b, nb, -1) for m in maps], 2),
               "scores": torch.cat([m[:, nb:].reshape(b, nc, -1) for m in maps], 2), "feats": maps}  # fmt: skip
    boxes, scores, feats = raw.get("boxes"), raw.get("scores"), raw.get("feats")
    if not all(isinstance(t, Tensor) for t in (boxes, scores)) or not isinstance(feats, (list, tuple)):
        raise ConfigError(
            f"{where}: expected a dict with 'boxes', 'scores' and 'feats' (per-level maps), got {list(raw)}"
        )
    if boxes.ndim != 3 or boxes.shape[1] != nb or scores.ndim != 3 or scores.shape[1] != nc:
        raise ConfigError(
            f"{where}: boxes {list(boxes.shape)} / scores {list(scores.shape)}; expected [B, 4*reg_max={nb}, A] "
            f"and [B, nc_det={nc}, A] (check 'reg_max' and det_names)"
        )
    if len(feats) != len(strides) or boxes.shape[-1] != sum(f.shape[-2] * f.shape[-1] for f in feats):
        raise ConfigError(
            f"{where}: 'feats' ({len(feats)} levels) does not add up to A={boxes.shape[-1]} positions"
        )
    return DetOutput.from_anchor_free(dict(raw), strides=tuple(strides), reg_max=reg_max)


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {list(x.shape)}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} items"
    return f"a {type(x).__name__}"


class GenericAdapter(MultiTaskAdapter):
    """Wraps any ``nn.Module``; its outputs are mapped to ``MultiTaskOutput`` by ``outputs``.

    Args:
        module: the wrapped model (``self.model``); ``module(images)`` returns a tensor, tuple/list or dict.
        det_names / seg_names: class names (required for each task that ``outputs`` maps).
        outputs: ``{"det": path, "seg": path}`` (either may be absent), path = index, key, or list of them.
        eval_outputs: paths used in eval mode instead (defaults to ``outputs``).
        det_kind: ``"anchor"`` (needs ``anchors``) or ``"anchor_free"`` (needs ``reg_max``); with ``strides``.
        seg_activation: ``"logits" | "sigmoid" | "softmax"``; see ``probs_to_logits``. With a single-channel
            sigmoid, ``seg_names`` must have two entries (background, foreground).
        features: short name → module path inside ``module`` (``{"p3": "neck.2"}``); module paths work too.
        freeze: module paths inside ``module`` whose parameters are frozen (``requires_grad=False``): branches
            whose outputs are not mapped (e.g. YOLOP's lane head when ``seg`` is the drivable area) and so would
            never get a gradient.
        input_mean / input_std: optional normalization of the ``[0, 1]`` images before ``module``.
        target / kwargs: import path and kwargs that rebuild ``module``; required for ``arch()``.
    """

    adapter_name = "generic"

    def __init__(
        self,
        module: nn.Module,
        *,
        det_names: Sequence[str] = (),
        seg_names: Sequence[str] = (),
        outputs: Mapping[str, OutputPath],
        eval_outputs: Mapping[str, OutputPath] | None = None,
        det_kind: str | None = None,
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
        super().__init__(det_names=det_names, seg_names=seg_names)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{_W}: expected an nn.Module, got {type(module).__name__}")
        for name, mapping in (("outputs", outputs), ("eval_outputs", eval_outputs or {})):
            if not isinstance(mapping, Mapping) or set(mapping) - {"det", "seg"}:
                raise ConfigError(
                    f"{_W}: field '{name}' = {mapping!r}; expected a dict with keys 'det' and/or 'seg'"
                )
        if not outputs:
            raise ConfigError(f"{_W}: field 'outputs' maps neither 'det' nor 'seg'")
        if seg_activation not in SEG_ACTIVATIONS:
            raise ConfigError(
                f"{_W}: field 'seg_activation' = {seg_activation!r}; expected one of {SEG_ACTIVATIONS}"
            )
        if "seg" in outputs and not self.seg_names:
            raise ConfigError(f"{_W}: 'outputs' maps 'seg', so 'seg_names' (or nc_seg) is required")
        self.model = module
        self.outputs = dict(outputs)
        self.eval_outputs = {**self.outputs, **dict(eval_outputs or {})}
        self.seg_activation = seg_activation
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
        self.det_kind: str | None = None
        self.strides: tuple[int, ...] = ()
        self.anchor_list: list[list[list[float]]] | None = None
        self.reg_max: int | None = None
        if "det" in self.outputs:
            self._init_det(det_kind, strides, anchors, reg_max)

    def _init_det(
        self, det_kind: str | None, strides: Sequence[int], anchors: Any, reg_max: int | None
    ) -> None:
        if not self.det_names:
            raise ConfigError(f"{_W}: 'outputs' maps 'det', so 'det_names' (or nc_det) is required")
        if det_kind not in DET_KINDS:
            raise ConfigError(f"{_W}: field 'det_kind' = {det_kind!r}; expected one of {DET_KINDS}")
        if not strides or not all(isinstance(s, int) and s > 0 for s in strides):
            raise ConfigError(f"{_W}: field 'strides' = {strides!r}; expected positive ints, one per level")
        self.det_kind, self.strides = det_kind, tuple(strides)
        if det_kind == "anchor":
            self.anchor_list = _normalize_anchors(anchors, len(self.strides))
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
        paths, key = (self.outputs, "outputs") if self.training else (self.eval_outputs, "eval_outputs")
        seg = det = None
        if "seg" in paths:
            seg = self._seg(select_output(out, paths["seg"], field=f"{key}.seg"), images.shape[-2:])
        if "det" in paths:
            raw = select_output(out, paths["det"], field=f"{key}.det")
            where = f"{_W}: '{key}.det'"
            if self.det_kind == "anchor":
                det = anchor_det_output(
                    raw, strides=self.strides, anchors=self.anchors, nc=self.nc_det, where=where
                )
            else:
                det = anchor_free_det_output(
                    raw, strides=self.strides, reg_max=self.reg_max, nc=self.nc_det, where=where
                )
        return MultiTaskOutput(seg=seg, det=det, features=feats)

    def _seg(self, p: Any, size: Sequence[int]) -> Tensor:
        if not isinstance(p, Tensor) or p.ndim != 4:
            raise ConfigError(f"{_W}: 'outputs.seg' selects {_describe(p)}; expected a [B, C, h, w] tensor")
        c = p.shape[1]
        binary = self.seg_activation == "sigmoid" and c == 1
        if (2 if binary else c) != self.nc_seg:
            raise ConfigError(
                f"{_W}: seg output has {c} channels but seg_names has {self.nc_seg} classes"
                + (
                    " (a 1-channel sigmoid output needs 2 seg_names: background, foreground)"
                    if binary
                    else ""
                )
            )
        logits = probs_to_logits(p, self.seg_activation)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    # ---------------------------------------------------------------- description
    def det_spec(self) -> DetSpec | None:
        if self.det_kind is None:
            return None
        anchors = None
        if self.anchor_list is not None:
            anchors = tuple(tuple((w, h) for w, h in level) for level in self.anchor_list)
        return DetSpec(self.det_kind, self.nc_det, self.strides, anchors=anchors, reg_max=self.reg_max)

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
        arch: dict[str, Any] = {
            "adapter": self.adapter_name, "target": self.target, "kwargs": dict(self.kwargs),
            "outputs": dict(self.outputs), "seg_activation": self.seg_activation,
            "det_names": list(self.det_names), "seg_names": list(self.seg_names), **self.norm.arch(),
        }  # fmt: skip
        if self.eval_outputs != self.outputs:
            arch["eval_outputs"] = dict(self.eval_outputs)
        if self.det_kind == "anchor":
            arch.update(det_kind="anchor", strides=list(self.strides), anchors=self.anchor_list)
        elif self.det_kind == "anchor_free":
            arch.update(det_kind="anchor_free", strides=list(self.strides), reg_max=self.reg_max)
        if self.taps.taps:
            arch["features"] = dict(self.taps.taps)
        if self.freeze:
            arch["freeze"] = list(self.freeze)
        return arch


def build(
    config: Mapping[str, Any],
    nc_det: int | None = None,
    nc_seg: int | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
) -> GenericAdapter:
    """Build from a config dict (module docstring); loads ``state_dict`` when given. Class names/counts of a
    task that ``outputs`` does not map are ignored."""
    check_keys(config, _CONFIG_KEYS, _W)
    if "target" not in config:
        raise ConfigError(f"{_W}: field 'target' is required ('package.module:Class')")
    kwargs = config.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{_W}: field 'kwargs' = {kwargs!r}; expected a dict of constructor arguments")
    outputs = config.get("outputs")
    if not isinstance(outputs, Mapping):
        raise ConfigError(f"{_W}: field 'outputs' = {outputs!r}; expected e.g. {{det: 0, seg: 1}}")
    module = _instantiate(config["target"], kwargs)
    if config.get("state_dict"):
        load_state_dict_file(module, config["state_dict"], config.get("state_dict_key"))
    det = resolve_names(det_names or config.get("det_names"), nc_det, "det", _W) if "det" in outputs else []
    seg = resolve_names(seg_names or config.get("seg_names"), nc_seg, "seg", _W) if "seg" in outputs else []
    if config.get("head") is not None and "det" in outputs:
        check_head(config["head"], config.get("det_kind", config["head"]), _W)
        config = {"det_kind": config["head"], **config}
    opts = {k: config[k] for k in ("eval_outputs", "det_kind", "strides", "anchors", "reg_max", "seg_activation",
                                   "features", "freeze", "input_mean", "input_std") if k in config}  # fmt: skip
    return GenericAdapter(
        module, det_names=det, seg_names=seg, outputs=outputs, target=config["target"], kwargs=kwargs, **opts
    )


def from_arch(arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch") -> GenericAdapter:
    """Inverse of ``GenericAdapter.arch()`` (no weights loaded; the checkpoint's state_dict follows).

    ``arch`` comes from a file, so its ``target`` is imported only when ``trust_code`` allows it
    (``mtkd.models.trust``); ``CheckpointError`` naming ``where`` and the path otherwise. A ``state_dict`` path in
    ``arch`` is never read (the weights travel in the checkpoint).
    """
    check_keys(arch, _CONFIG_KEYS, f"{_W} arch")
    target = arch.get("target")
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(f"{_W} arch: field 'target' = {target!r}; expected 'package.module:Class'")
    require_trusted(target, trust_code, where)
    return build({k: v for k, v in arch.items() if k != "state_dict"})
