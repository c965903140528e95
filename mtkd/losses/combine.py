"""Combine task losses and distillation terms into the training loss (DESIGN.md §2, docs/INTERFACES.md).

::

    seg_total = (1 - alpha_seg) * seg_loss + alpha_seg * seg_kd
    det_total = (1 - alpha_det) * det_loss + alpha_det * det_kd
    loss      = ratio_det * det_total + ratio_seg * seg_total + feat_weight * feat_kd

A model with several seg tasks (``out.seg_tasks``, e.g. drivable + lane) has one ``seg_total_t`` per task ``t``,
with the task's own ``alpha``/``ratio`` from ``seg_tasks`` (default ``alpha_seg``/``ratio_seg``), and
``loss = ratio_det * det_total + sum_t ratio_t * seg_total_t + feat_weight * feat_kd``; every per-task term is
logged as ``<term>/<task>`` (``seg_loss/lane``, ``seg_kd/lane``, ``seg_total/lane``) and ``seg_loss``, ``seg_kd``,
``seg_total`` are their sums over the tasks.

``temperature``, ``alpha_seg`` and ``alpha_det`` may follow a ``Schedule`` over training progress. With
``distill.off_last_epochs = N`` every KD term is switched off for the last ``N`` of ``epochs`` epochs (mmyolo's
two-stage schedule: the student ends on the task losses alone): ``DistillLoss.kd_active(progress)`` is false and
the step's terms are those of ``plain_loss`` (KD terms, ``temperature`` and alphas logged as 0).

The options are the typed values of the training config (``mtkd.config``: top-level ``temperature``,
``alpha_seg``, ``alpha_det``, ``ratio_seg``, ``ratio_det`` and the ``distill`` section), validated there and
only there; ``DistillLoss`` takes them as they are, with the config's defaults (``DistillLoss.from_config``
reads a ``TrainConfig``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mtkd.config import DetKDConfig, DistillConfig, FeatKDConfig, TrainConfig
from mtkd.errors import CompatibilityError
from mtkd.losses.feature_kd import FeatureDistiller
from mtkd.losses.logit_kd import det_logit_kd, seg_cwd, seg_dist, seg_kl, zero_like
from mtkd.losses.plain import EXTRA_KEYS, MAIN_KEYS, plain_loss, seg_task_names
from mtkd.models.outputs import MultiTaskOutput
from mtkd.utils.schedules import Schedule


class DistillLoss(nn.Module):
    """Task + distillation loss combination; owns the feature connectors (its only parameters).

    Keep it separate from the student: ``student.state_dict()`` never contains connectors, and
    ``DistillLoss.state_dict()`` holds only them. Give ``DistillLoss.parameters()`` to the optimizer together
    with the student's (after ``build`` when feature KD uses connectors) and call ``.train()`` / ``.to(device)``
    on it like on the student (the trainer's distillation task does both).

    Args (keyword-only; typed values as ``mtkd.config`` validates them, defaults from there):
        temperature: ``T > 0``: a number, a ``Schedule`` or the config's schedule mapping ``{kind, start, end}``.
        alpha_seg, alpha_det: in ``[0, 1]``, same forms as ``temperature``.
        ratio_seg, ratio_det: ``>= 0``.
        seg_kd: ``"kl"`` (``seg_kl``), ``"cwd"`` (``seg_cwd``) or ``"dist"`` (``seg_dist``).
        seg_kd_options: keyword options of that loss (``dist``: ``beta``, ``gamma``, ``tau``); ``{}`` = its defaults.
        seg_kd_at: ``"head"``: seg KD on both models' head logits before their bilinear upsampling
            (``out.seg_head_logits``, stride 8 for the built-in head: 64x fewer pixels) when both expose them at
            the same size, else at input size; ``"input"``: always on the upsampled logits. Bilinear upsampling
            is linear in the logits but the KL/DIST/CWD are not, so the value at the head's resolution is close
            to, not equal to, the value at input size (equal where the head does not upsample).
        seg_ignore_index: mask pixels where ``batch["masks"] == seg_ignore_index`` out of the seg KL and DIST
            (needs ``batch`` in ``forward``); ``None`` keeps every pixel. The dataset's ``ignore_index``.
        det_kd: ``DetKDConfig`` (options of ``det_logit_kd``: ``weight``, ``weight_by_teacher``, ``ld``,
            ``temperature``; ``temperature=None`` follows ``temperature``).
        feat_kd: ``None``, a ``FeatKDConfig`` (no ``names``: off) or a ready ``FeatureDistiller``.
        student_channels, teacher_channels: ``{name: C}`` to build the connectors at once.
        off_last_epochs, epochs: KD is off from epoch ``epochs - off_last_epochs`` on (0-based; module
            docstring); ``epochs`` is needed only when ``off_last_epochs > 0``.
        seg_tasks: ``{task: {"alpha": ..., "ratio": ...}}`` per-task overrides of ``alpha_seg`` / ``ratio_seg`` for a
            model with several seg tasks (the config's ``seg_tasks``).
    """

    def __init__(
        self,
        *,
        temperature: float | Mapping | Schedule = TrainConfig.temperature,
        alpha_seg: float | Mapping | Schedule = TrainConfig.alpha_seg,
        alpha_det: float | Mapping | Schedule = TrainConfig.alpha_det,
        ratio_seg: float = TrainConfig.ratio_seg,
        ratio_det: float = TrainConfig.ratio_det,
        seg_kd: str = DistillConfig.seg_kd,
        seg_kd_options: Mapping[str, float] | None = None,
        seg_kd_at: str = DistillConfig.seg_kd_at,
        seg_ignore_index: int | None = 255,
        det_kd: DetKDConfig | None = None,
        feat_kd: FeatKDConfig | FeatureDistiller | None = None,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
        off_last_epochs: int = DistillConfig.off_last_epochs,
        epochs: int | None = None,
        seg_tasks: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if off_last_epochs and epochs is None:
            raise ValueError("DistillLoss: off_last_epochs > 0 needs epochs")
        self.off_last_epochs, self.epochs = int(off_last_epochs), epochs
        self.temperature = Schedule.parse(temperature, key="temperature")
        self.alpha_seg = Schedule.parse(alpha_seg, key="alpha_seg")
        self.alpha_det = Schedule.parse(alpha_det, key="alpha_det")
        self.ratio_seg, self.ratio_det = float(ratio_seg), float(ratio_det)
        self.task_alpha = {
            t: Schedule.parse(o["alpha"], key=f"seg_tasks.{t}.alpha")
            for t, o in (seg_tasks or {}).items()
            if "alpha" in o
        }
        self.task_ratio = {t: float(o["ratio"]) for t, o in (seg_tasks or {}).items() if "ratio" in o}
        self.seg_kd, self.seg_kd_options = seg_kd, dict(seg_kd_options or {})
        self.seg_kd_at = seg_kd_at
        self.seg_ignore_index = seg_ignore_index
        self.det_kd = det_kd if det_kd is not None else DetKDConfig()
        if isinstance(feat_kd, FeatKDConfig):
            feat_kd = _feature_distiller(feat_kd)
        self.feature: FeatureDistiller | None = feat_kd
        if self.feature is not None and student_channels is not None and teacher_channels is not None:
            self.feature.build(student_channels, teacher_channels)

    @classmethod
    def from_config(
        cls,
        cfg: TrainConfig,
        *,
        ignore_index: int | None = 255,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
    ) -> DistillLoss:
        """From a validated training config (``mtkd.config.load_config``); ``ignore_index`` is the dataset's."""
        return cls(
            temperature=cfg.temperature,
            alpha_seg=cfg.alpha_seg,
            alpha_det=cfg.alpha_det,
            ratio_seg=cfg.ratio_seg,
            ratio_det=cfg.ratio_det,
            seg_kd=cfg.distill.seg_kd,
            seg_kd_options=cfg.distill.seg_kd_options,
            seg_kd_at=cfg.distill.seg_kd_at,
            seg_ignore_index=ignore_index,
            det_kd=cfg.distill.det_kd,
            feat_kd=cfg.distill.feat_kd,
            student_channels=student_channels,
            teacher_channels=teacher_channels,
            off_last_epochs=cfg.distill.off_last_epochs,
            epochs=cfg.epochs,
            seg_tasks=cfg.seg_tasks,
        )

    def kd_active(self, progress: float) -> bool:
        """False in the last ``off_last_epochs`` epochs: ``progress * epochs`` (= global step / steps per epoch)
        has reached ``epochs - off_last_epochs`` (a 1e-6 tolerance absorbs float rounding of the trainer's
        ``step / total``; it would misplace the switch only with over a million steps per epoch)."""
        if not self.off_last_epochs:
            return True
        return float(progress) * self.epochs < self.epochs - self.off_last_epochs - 1e-6

    @property
    def det_distilled(self) -> bool:
        """Whether det logit KD carries weight at some point (``alpha_det`` not 0 all along, ``det_kd.weight > 0``)."""
        return not _never(self.alpha_det) and self.det_kd.weight > 0

    @property
    def seg_distilled(self) -> bool:
        """Whether seg logit KD carries weight at some point (``alpha_seg`` or a task's own alpha not 0 all along)."""
        return not all(_never(a) for a in (self.alpha_seg, *self.task_alpha.values()))

    @property
    def feature_names(self) -> list[str]:
        """Feature taps to request from the student (``model(x, features=...)``); empty without feature KD."""
        return list(self.feature.names) if self.feature is not None else []

    @property
    def teacher_feature_names(self) -> list[str]:
        """The teacher's taps for them (``distill.feat_kd.teacher_names``, e.g. ``det.p3`` for ``p3``)."""
        return self.feature.teacher_feature_names if self.feature is not None else []

    def build(self, student_channels: Mapping[str, int], teacher_channels: Mapping[str, int]) -> DistillLoss:
        """Create feature connectors (no-op without feature KD); call before building the optimizer."""
        if self.feature is not None:
            self.feature.build(student_channels, teacher_channels)
        return self

    def forward(
        self,
        s_out: MultiTaskOutput,
        t_out: MultiTaskOutput | None,
        task: Mapping[str, Tensor],
        progress: float,
        batch: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """All terms for one step.

        Args:
            s_out, t_out: student / teacher outputs (teacher tensors are detached inside); ``t_out`` may be
                ``None`` where ``kd_active(progress)`` is false (the task skips the teacher there).
            task: the student's task losses (``TaskLoss``): ``seg_loss``, ``det_loss`` and sub-terms.
            progress: fraction of training done in ``[0, 1]``, for the schedules.
            batch: the training batch; ``batch["masks"] [B, H, W]`` gives the seg ignore mask.

        Returns:
            ``MAIN_KEYS`` + ``EXTRA_KEYS`` + the task sub-terms (``det_box``, ...; a task ``loss`` key is
            replaced by ours) + ``feat_kd_<name>`` per feature tap, all 0-d float32 tensors. Absent terms (no
            det in the model, feature KD off) are constant zeros without autograd history. ``temperature``,
            ``alpha_seg`` and ``alpha_det`` are the current schedule values as constant tensors (``.item()``
            to log). Only ``loss`` is meant for ``backward()``. KD off (``kd_active``): ``_kd_off``.
        """
        if not self.kd_active(progress):
            return self._kd_off(task)
        temp = self.temperature(progress)
        a_seg, a_det = self.alpha_seg(progress), self.alpha_det(progress)
        zero = zero_like(_reference(s_out, task))
        out: dict[str, Tensor] = {k: v for k, v in task.items() if k not in MAIN_KEYS + EXTRA_KEYS}
        seg_loss = task["seg_loss"].float() if "seg_loss" in task else zero
        det_loss = task["det_loss"].float() if "det_loss" in task else zero

        seg_kd = zero
        if s_out.multi_seg:
            seg = self._seg_tasks(s_out, t_out, task, temp, a_seg, batch, progress)
        elif _never(self.alpha_seg):  # seg not distilled: the heads need not match
            pass
        elif s_out.seg is not None and t_out.seg is not None:
            s, t = self._kd_pair("seg", s_out, t_out)
            seg_kd = self._seg_kd(s, t, temp, self._ignore_mask(batch, s))
        else:
            _require_teacher("seg", s_out.seg, t_out.seg, a_seg * self.ratio_seg)

        det_terms = {"det_kd": zero, "det_kd_box": zero, "det_kd_obj": zero, "det_kd_cls": zero}
        if not self.det_distilled:  # alpha_det 0 all along or weight 0: the heads need not match
            pass
        elif s_out.det is not None and t_out.det is not None:
            o = self.det_kd
            det_terms.update(
                det_logit_kd(
                    s_out.det,
                    t_out.det,
                    weight=o.weight,
                    weight_by_teacher=o.weight_by_teacher,
                    ld=o.ld,
                    temperature=o.temperature if o.temperature is not None else temp,
                )
            )
        else:
            _require_teacher("det", s_out.det, t_out.det, a_det * self.ratio_det)

        feat_kd, feat_w = zero, 0.0
        if self.feature is not None:
            feat_terms = self.feature(s_out.features, t_out.features, t_det=t_out.det)
            feat_kd, feat_w = feat_terms.pop("feat_kd"), self.feature.weight
            out.update(feat_terms)

        if s_out.multi_seg:  # per-task terms and their sums; weighted_seg = sum_t ratio_t * seg_total_t
            out.update(seg["terms"])
            seg_loss, seg_kd, seg_total, weighted_seg = (
                seg["seg_loss"],
                seg["seg_kd"],
                seg["seg_total"],
                seg["weighted"],
            )
        else:
            seg_total = (1.0 - a_seg) * seg_loss + a_seg * seg_kd
            weighted_seg = self.ratio_seg * seg_total
        det_total = (1.0 - a_det) * det_loss + a_det * det_terms["det_kd"]
        out.update(
            seg_loss=seg_loss,
            seg_kd=seg_kd,
            det_loss=det_loss,
            feat_kd=feat_kd,
            seg_total=seg_total,
            det_total=det_total,
            **det_terms,
            loss=self.ratio_det * det_total + weighted_seg + feat_w * feat_kd,
            temperature=zero.new_tensor(temp),
            alpha_seg=zero.new_tensor(a_seg),
            alpha_det=zero.new_tensor(a_det),
        )
        return out

    def _kd_pair(self, task: str, s_out: MultiTaskOutput, t_out: MultiTaskOutput) -> tuple[Tensor, Tensor]:
        """The student / teacher logits seg KD of ``task`` compares: the heads' logits before upsampling
        (``seg_kd_at="head"``, both exposed at one size), else the outputs."""
        s_low, t_low = s_out.seg_head_logits.get(task), t_out.seg_head_logits.get(task)
        if (
            self.seg_kd_at == "head"
            and s_low is not None
            and t_low is not None
            and s_low.shape == t_low.shape
        ):
            return s_low, t_low
        return s_out.seg_outputs[task], t_out.seg_outputs[task]

    def _seg_kd(self, s: Tensor, t: Tensor, temp: float, ignore: Tensor | None) -> Tensor:
        """The configured seg logit KD of student ``s`` and teacher ``t`` logits ``[B, C, h, w]``."""
        if self.seg_kd == "kl":
            return seg_kl(s, t, temperature=temp, ignore_mask=ignore)
        if self.seg_kd == "dist":
            return seg_dist(s, t, ignore_mask=ignore, **self.seg_kd_options)
        return seg_cwd(s, t, temperature=temp)

    def _seg_tasks(
        self,
        s_out: MultiTaskOutput,
        t_out: MultiTaskOutput,
        task: Mapping[str, Tensor],
        temp: float,
        a_seg: float,
        batch: Mapping[str, Any] | None,
        progress: float,
    ) -> dict[str, Any]:
        """Per seg task ``t``: ``seg_kd/t``, ``seg_total/t`` (with the task's alpha) and the sums (module docstring)."""
        s_segs, t_segs = s_out.seg_outputs, t_out.seg_outputs
        masks = (batch or {}).get("seg_masks") or {}
        zero = zero_like(next(iter(s_segs.values())))
        terms: dict[str, Tensor] = {}
        sums = {"seg_loss": zero, "seg_kd": zero, "seg_total": zero, "weighted": zero}
        for name, s in s_segs.items():
            a = self.task_alpha[name](progress) if name in self.task_alpha else a_seg
            ratio = self.task_ratio.get(name, self.ratio_seg)
            loss_t = task[f"seg_loss/{name}"].float() if f"seg_loss/{name}" in task else zero
            kd_t = zero
            if _never(self.task_alpha.get(name, self.alpha_seg)):
                pass  # this task is not distilled: the teacher need not have it
            elif name in t_segs:
                ignore = None
                if self.seg_ignore_index is not None and name in masks:
                    ignore = masks[name].to(s.device) == self.seg_ignore_index
                s_kd, t_kd = self._kd_pair(name, s_out, t_out)
                kd_t = self._seg_kd(s_kd, t_kd, temp, ignore)
            elif a * ratio > 0:
                raise CompatibilityError(
                    f"the teacher has no output for seg task '{name}' but its alpha > 0 (and ratio > 0): set "
                    f"seg_tasks.{name}.alpha=0 or use a teacher with a '{name}' head"
                )
            total_t = (1.0 - a) * loss_t + a * kd_t
            terms.update(
                {
                    f"seg_kd/{name}": kd_t,
                    f"seg_total/{name}": total_t,
                    f"alpha_seg/{name}": zero.new_tensor(a),
                }
            )
            for k, v in (
                ("seg_loss", loss_t),
                ("seg_kd", kd_t),
                ("seg_total", total_t),
                ("weighted", ratio * total_t),
            ):
                sums[k] = sums[k] + v
        return {**sums, "terms": terms}

    def _kd_off(self, task: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``plain_loss(task)`` (bitwise the loss of plain training) plus ``feat_kd_<name>`` zeros, so the columns
        stay those of the distilled epochs. The connectors get zero gradients (``0 * sum(params)`` added: exact,
        the parameters are finite) rather than none, so DDP, which expects every parameter in every step, works."""
        out = plain_loss(task, ratio_seg=self.ratio_seg, ratio_det=self.ratio_det, seg_ratios=self.task_ratio)
        zero = out["feat_kd"]
        out.update({f"feat_kd_{n}": zero for n in self.feature_names})
        for name in seg_task_names(task):
            out.update({f"seg_kd/{name}": zero, f"alpha_seg/{name}": zero})
        params = [p for p in self.parameters() if p.requires_grad]
        if params:
            out["loss"] = out["loss"] + 0.0 * sum(p.sum() for p in params)
        return out

    def _ignore_mask(self, batch: Mapping[str, Any] | None, seg: Tensor) -> Tensor | None:
        if self.seg_ignore_index is None or batch is None or batch.get("masks") is None:
            return None
        return batch["masks"].to(seg.device) == self.seg_ignore_index

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha_seg={self.alpha_seg}, alpha_det={self.alpha_det}, "
            f"ratio_seg={self.ratio_seg}, ratio_det={self.ratio_det}, seg_kd={self.seg_kd!r}, det_kd={self.det_kd}"
            + (f", seg_kd_options={self.seg_kd_options}" if self.seg_kd_options else "")
            + (f", off_last_epochs={self.off_last_epochs}" if self.off_last_epochs else "")
        )


def _feature_distiller(cfg: FeatKDConfig) -> FeatureDistiller | None:
    """The ``FeatureDistiller`` of a ``distill.feat_kd`` section (``None`` when it names no feature)."""
    if not cfg.names:
        return None
    return FeatureDistiller(
        names=list(cfg.names), kind=cfg.kind, weight=cfg.weight, connector_bn=cfg.connector_bn,
        teacher_names=cfg.teacher_names, **cfg.options,
    )  # fmt: skip


def _never(schedule: Schedule) -> bool:
    """A schedule that is 0 from start to end (the KD term it mixes in never counts)."""
    return schedule.start == 0 and schedule.end == 0


def _reference(s_out: MultiTaskOutput, task: Mapping[str, Tensor]) -> Tensor | None:
    """Any tensor of the step, to put zeros on the right device."""
    if s_out.seg_outputs:
        return next(iter(s_out.seg_outputs.values()))
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
