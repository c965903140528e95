"""Combine task losses and distillation terms into the training loss (DESIGN.md §2, docs/INTERFACES.md).

::

    seg_total = (1 - alpha_seg) * seg_loss + alpha_seg * seg_kd
    det_total = (1 - alpha_det) * det_loss + alpha_det * det_kd
    loss      = ratio_det * det_total + ratio_seg * seg_total + feat_weight * feat_kd

``temperature``, ``alpha_seg`` and ``alpha_det`` may follow a ``Schedule`` over training progress.

Config mapping (``DistillLoss.from_config``; every key optional, unknown keys rejected). In a training config
``temperature``, the alphas and the ratios are top-level keys and the rest sits under ``distill:``; error
messages name the keys that way (``alpha_seg``, ``distill.det_kd.weight``)::

    temperature: 1.0          # > 0; number or {kind: constant|linear|cosine, start, end}
    alpha_seg: 0.5            # [0, 1]; number or schedule
    alpha_det: 0.5            # [0, 1]; number or schedule
    ratio_seg: 1.0            # >= 0
    ratio_det: 1.0            # >= 0
    seg_kd: kl                # kl (pixel-wise KL) | cwd (channel-wise distillation)
    seg_ignore_index: 255     # pixels with batch["masks"] == this are left out of seg KL; null = keep all
    det_kd:                   # detection logit KD options
      weight: 1.0             # >= 0, multiplies (box + obj + cls)
      weight_by_teacher: true # weight anchors by teacher objectness / max class score
      ld: false               # anchor-free heads: KL over DFL bins instead of MSE on DFL logits
      temperature: null       # LD temperature; null = follow `temperature`
    feat_kd:                  # null = no feature distillation
      names: [p3, p4, p5]     # feature taps present in both models' outputs
      kind: fitnet            # fitnet | at | sp | cc | cwd
      weight: 1.0             # feat_weight >= 0
      connector_bn: true      # BatchNorm after connector convs
      # kind-specific: p (at), kernel/gamma/order (cc), temperature (cwd)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mtkd.errors import CompatibilityError, ConfigError
from mtkd.losses.feature_kd import FeatureDistiller
from mtkd.losses.logit_kd import det_logit_kd, seg_cwd, seg_kl, zero_like
from mtkd.utils.schedules import Schedule, did_you_mean
from mtkd.models.outputs import MultiTaskOutput

#: Main terms, always present in the result of ``DistillLoss.forward`` and ``plain_loss``.
MAIN_KEYS = ("seg_loss", "seg_kd", "det_loss", "det_kd", "feat_kd", "loss")
#: Further keys always present in both results (so logs have the same columns with or without a teacher).
EXTRA_KEYS = (
    "seg_total",
    "det_total",
    "det_kd_box",
    "det_kd_obj",
    "det_kd_cls",
    "temperature",
    "alpha_seg",
    "alpha_det",
)

_TOP_KEYS = (
    "temperature",
    "alpha_seg",
    "alpha_det",
    "ratio_seg",
    "ratio_det",
    "seg_kd",
    "seg_ignore_index",
    "det_kd",
    "feat_kd",
)
_DET_DEFAULTS: dict[str, Any] = {"weight": 1.0, "weight_by_teacher": True, "ld": False, "temperature": None}
_FEAT_KEYS = ("names", "kind", "weight", "connector_bn", "p", "kernel", "gamma", "order", "temperature")
_SEG_KD = ("kl", "cwd")


def _number(value: Any, key: str, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value < math.inf):
        raise ConfigError(f"{key}: {value!r} is outside the allowed range [{low}, inf)")
    return float(value)


def _check_keys(cfg: Mapping, allowed: tuple[str, ...], key: str) -> None:
    for k in cfg:
        if k not in allowed:
            raise ConfigError(
                f"{key}: unknown key {k!r}, expected one of {list(allowed)}{did_you_mean(str(k), allowed)}"
            )


class DistillLoss(nn.Module):
    """Task + distillation loss combination; owns the feature connectors (its only parameters).

    Keep it separate from the student: ``student.state_dict()`` never contains connectors, and
    ``DistillLoss.state_dict()`` holds only them. Give ``DistillLoss.parameters()`` to the optimizer together
    with the student's (after ``build`` when feature KD uses connectors) and call ``.train()`` / ``.to(device)``
    on it like on the student.

    Args (keyword-only; see the module docstring for the config form):
        temperature: ``T > 0``, number / schedule mapping / ``Schedule``.
        alpha_seg, alpha_det: in ``[0, 1]``, number / schedule mapping / ``Schedule``.
        ratio_seg, ratio_det: ``>= 0``.
        seg_kd: ``"kl"`` (``seg_kl``) or ``"cwd"`` (``seg_cwd``).
        seg_ignore_index: mask pixels where ``batch["masks"] == seg_ignore_index`` out of the seg KL
            (needs ``batch`` in ``forward``); ``None`` keeps every pixel.
        det_kd: options of ``det_logit_kd``: ``weight``, ``weight_by_teacher``, ``ld``, ``temperature``.
        feat_kd: ``None``, a ``FeatureDistiller``, or its options ``{names, kind, weight, ...}``.
        student_channels, teacher_channels: ``{name: C}`` to build the connectors at once.
    """

    def __init__(
        self,
        *,
        temperature: float | Mapping | Schedule = 1.0,
        alpha_seg: float | Mapping | Schedule = 0.5,
        alpha_det: float | Mapping | Schedule = 0.5,
        ratio_seg: float = 1.0,
        ratio_det: float = 1.0,
        seg_kd: str = "kl",
        seg_ignore_index: int | None = 255,
        det_kd: Mapping[str, Any] | None = None,
        feat_kd: Mapping[str, Any] | FeatureDistiller | None = None,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.temperature = Schedule.parse(temperature, key="temperature")
        self.temperature.check_range("temperature", low=0.0, low_inclusive=False)
        self.alpha_seg = Schedule.parse(alpha_seg, key="alpha_seg")
        self.alpha_seg.check_range("alpha_seg", low=0.0, high=1.0)
        self.alpha_det = Schedule.parse(alpha_det, key="alpha_det")
        self.alpha_det.check_range("alpha_det", low=0.0, high=1.0)
        self.ratio_seg = _number(ratio_seg, "ratio_seg")
        self.ratio_det = _number(ratio_det, "ratio_det")
        if seg_kd not in _SEG_KD:
            raise ConfigError(
                f"distill.seg_kd: {seg_kd!r} is not one of {list(_SEG_KD)}{did_you_mean(str(seg_kd), _SEG_KD)}"
            )
        self.seg_kd = seg_kd
        if seg_ignore_index is not None and (
            isinstance(seg_ignore_index, bool) or not isinstance(seg_ignore_index, int)
        ):
            raise ConfigError(f"seg_ignore_index: expected an integer or null, got {seg_ignore_index!r}")
        self.seg_ignore_index = seg_ignore_index
        self.det_options = self._det_options(det_kd or {})
        if isinstance(feat_kd, Mapping):
            _check_keys(feat_kd, _FEAT_KEYS, "distill.feat_kd")
            feat_kd = FeatureDistiller(**feat_kd)
        elif feat_kd is not None and not isinstance(feat_kd, FeatureDistiller):
            raise ConfigError(f"distill.feat_kd: expected a mapping or null, got {type(feat_kd).__name__}")
        self.feature: FeatureDistiller | None = feat_kd
        if self.feature is not None and student_channels is not None and teacher_channels is not None:
            self.feature.build(student_channels, teacher_channels)

    @staticmethod
    def _det_options(det_kd: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(det_kd, Mapping):
            raise ConfigError(f"distill.det_kd: expected a mapping, got {type(det_kd).__name__}")
        _check_keys(det_kd, tuple(_DET_DEFAULTS), "distill.det_kd")
        opts = {**_DET_DEFAULTS, **det_kd}
        opts["weight"] = _number(opts["weight"], "distill.det_kd.weight")
        for k in ("weight_by_teacher", "ld"):
            if not isinstance(opts[k], bool):
                raise ConfigError(f"distill.det_kd.{k}: expected true or false, got {opts[k]!r}")
        if opts["temperature"] is not None:
            t = opts["temperature"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
                raise ConfigError(f"distill.det_kd.temperature: {t!r} is outside the allowed range (0, inf)")
            opts["temperature"] = float(t)
        return opts

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any] | None,
        *,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
    ) -> DistillLoss:
        """Build from the distillation config section (keys in the module docstring); unknown keys raise."""
        if cfg is not None and not isinstance(cfg, Mapping):
            raise ConfigError(f"DistillLoss config: expected a mapping, got {type(cfg).__name__}")
        cfg = dict(cfg or {})
        _check_keys(cfg, _TOP_KEYS, "DistillLoss config")
        return cls(**cfg, student_channels=student_channels, teacher_channels=teacher_channels)

    @property
    def feature_names(self) -> list[str]:
        """Feature taps to request from both models (``model(x, features=...)``); empty without feature KD."""
        return list(self.feature.names) if self.feature is not None else []

    def build(self, student_channels: Mapping[str, int], teacher_channels: Mapping[str, int]) -> DistillLoss:
        """Create feature connectors (no-op without feature KD); call before building the optimizer."""
        if self.feature is not None:
            self.feature.build(student_channels, teacher_channels)
        return self

    def forward(
        self,
        s_out: MultiTaskOutput,
        t_out: MultiTaskOutput,
        task: Mapping[str, Tensor],
        progress: float,
        batch: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """All terms for one step.

        Args:
            s_out, t_out: student / teacher outputs (teacher tensors are detached inside).
            task: the student's task losses (``TaskLoss``): ``seg_loss``, ``det_loss`` and sub-terms.
            progress: fraction of training done in ``[0, 1]``, for the schedules.
            batch: the training batch; ``batch["masks"] [B, H, W]`` gives the seg ignore mask.

        Returns:
            ``MAIN_KEYS`` + ``EXTRA_KEYS`` + the task sub-terms (``det_box``, ...; a task ``loss`` key is
            replaced by ours) + ``feat_kd_<name>`` per feature tap, all 0-d float32 tensors. Absent terms (no
            det in the model, feature KD off) are constant zeros without autograd history. ``temperature``,
            ``alpha_seg`` and ``alpha_det`` are the current schedule values as constant tensors (``.item()``
            to log). Only ``loss`` is meant for ``backward()``.
        """
        temp = self.temperature(progress)
        a_seg, a_det = self.alpha_seg(progress), self.alpha_det(progress)
        zero = zero_like(_reference(s_out, task))
        out: dict[str, Tensor] = {k: v for k, v in task.items() if k not in MAIN_KEYS + EXTRA_KEYS}
        seg_loss = task["seg_loss"].float() if "seg_loss" in task else zero
        det_loss = task["det_loss"].float() if "det_loss" in task else zero

        seg_kd = zero
        if s_out.seg is not None and t_out.seg is not None:
            if self.seg_kd == "kl":
                seg_kd = seg_kl(
                    s_out.seg, t_out.seg, temperature=temp, ignore_mask=self._ignore_mask(batch, s_out.seg)
                )
            else:
                seg_kd = seg_cwd(s_out.seg, t_out.seg, temperature=temp)
        else:
            _require_teacher("seg", s_out.seg, t_out.seg, a_seg * self.ratio_seg)

        det_terms = {"det_kd": zero, "det_kd_box": zero, "det_kd_obj": zero, "det_kd_cls": zero}
        if s_out.det is not None and t_out.det is not None:
            o = self.det_options
            det_terms.update(
                det_logit_kd(
                    s_out.det,
                    t_out.det,
                    weight=o["weight"],
                    weight_by_teacher=o["weight_by_teacher"],
                    ld=o["ld"],
                    temperature=o["temperature"] if o["temperature"] is not None else temp,
                )
            )
        else:
            _require_teacher("det", s_out.det, t_out.det, a_det * self.ratio_det)

        feat_kd, feat_w = zero, 0.0
        if self.feature is not None:
            feat_terms = self.feature(s_out.features, t_out.features)
            feat_kd, feat_w = feat_terms.pop("feat_kd"), self.feature.weight
            out.update(feat_terms)

        seg_total = (1.0 - a_seg) * seg_loss + a_seg * seg_kd
        det_total = (1.0 - a_det) * det_loss + a_det * det_terms["det_kd"]
        out.update(
            seg_loss=seg_loss,
            seg_kd=seg_kd,
            det_loss=det_loss,
            feat_kd=feat_kd,
            seg_total=seg_total,
            det_total=det_total,
            **det_terms,
            loss=self.ratio_det * det_total + self.ratio_seg * seg_total + feat_w * feat_kd,
            temperature=zero.new_tensor(temp),
            alpha_seg=zero.new_tensor(a_seg),
            alpha_det=zero.new_tensor(a_det),
        )
        return out

    def _ignore_mask(self, batch: Mapping[str, Any] | None, seg: Tensor) -> Tensor | None:
        if self.seg_ignore_index is None or batch is None or batch.get("masks") is None:
            return None
        return batch["masks"].to(seg.device) == self.seg_ignore_index

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha_seg={self.alpha_seg}, alpha_det={self.alpha_det}, "
            f"ratio_seg={self.ratio_seg}, ratio_det={self.ratio_det}, seg_kd={self.seg_kd!r}, det_kd={self.det_options}"
        )


def _reference(s_out: MultiTaskOutput, task: Mapping[str, Tensor]) -> Tensor | None:
    """Any tensor of the step, to put zeros on the right device."""
    if s_out.seg is not None:
        return s_out.seg
    if s_out.det is not None:
        return s_out.det.cls
    return next((v for v in task.values() if isinstance(v, Tensor)), None)


def _require_teacher(task_name: str, s: Any, t: Any, weight: float) -> None:
    """A student output without a teacher counterpart may not carry KD weight (it would silently shrink)."""
    if s is not None and t is None and weight > 0:
        raise CompatibilityError(
            f"the teacher has no {task_name} output but alpha_{task_name} > 0 (and ratio_{task_name} > 0): "
            f"set alpha_{task_name}=0 or use a teacher with a {task_name} head"
        )


def plain_loss(
    task: Mapping[str, Tensor], *, ratio_seg: float = 1.0, ratio_det: float = 1.0
) -> dict[str, Tensor]:
    """Training without a teacher: ``loss = ratio_det * det_loss + ratio_seg * seg_loss``.

    Returns the same keys as ``DistillLoss.forward`` (``MAIN_KEYS`` + ``EXTRA_KEYS`` + task sub-terms) with
    every KD term, ``temperature`` and the alphas set to 0, so logs have the same columns either way (only the
    per-tap ``feat_kd_<name>`` columns exist in distilled runs alone).
    """
    ratio_seg, ratio_det = _number(ratio_seg, "ratio_seg"), _number(ratio_det, "ratio_det")
    zero = zero_like(next((v for v in task.values() if isinstance(v, Tensor)), None))
    out: dict[str, Tensor] = {k: v for k, v in task.items() if k not in MAIN_KEYS + EXTRA_KEYS}
    seg_loss = task["seg_loss"].float() if "seg_loss" in task else zero
    det_loss = task["det_loss"].float() if "det_loss" in task else zero
    out.update({k: zero for k in ("seg_kd", "det_kd", "feat_kd", "det_kd_box", "det_kd_obj", "det_kd_cls")})
    out.update({k: zero for k in ("temperature", "alpha_seg", "alpha_det")})
    out.update(seg_loss=seg_loss, det_loss=det_loss, seg_total=seg_loss, det_total=det_loss)
    out["loss"] = ratio_det * det_loss + ratio_seg * seg_loss
    return out
