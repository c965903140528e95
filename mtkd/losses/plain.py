"""Training without a teacher: ``plain_loss`` combines the task losses with the same keys as ``DistillLoss``
(``MAIN_KEYS`` + ``EXTRA_KEYS``), so logs have the same columns with or without distillation."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from mtkd.config import TrainConfig
from mtkd.losses.logit_kd import zero_like

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


def seg_task_names(task: Mapping[str, Tensor]) -> list[str]:
    """The seg tasks of a several-task model's task losses (their ``seg_loss/<task>`` keys), in order."""
    return [k.split("/", 1)[1] for k in task if k.startswith("seg_loss/")]


def plain_loss(
    task: Mapping[str, Tensor],
    *,
    ratio_seg: float = TrainConfig.ratio_seg,
    ratio_det: float = TrainConfig.ratio_det,
    seg_ratios: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Training without a teacher: ``loss = ratio_det * det_loss + ratio_seg * seg_loss`` (several seg tasks:
    ``+ sum_t ratio_t * seg_loss_t``, ``ratio_t`` from ``seg_ratios``, default ``ratio_seg``).

    Returns the same keys as ``DistillLoss.forward`` (``MAIN_KEYS`` + ``EXTRA_KEYS`` + task sub-terms) with
    every KD term, ``temperature`` and the alphas set to 0, so logs have the same columns either way (only the
    per-tap ``feat_kd_<name>`` columns exist in distilled runs alone).
    """
    ratio_seg, ratio_det = float(ratio_seg), float(ratio_det)
    zero = zero_like(next((v for v in task.values() if isinstance(v, Tensor)), None))
    out: dict[str, Tensor] = {k: v for k, v in task.items() if k not in MAIN_KEYS + EXTRA_KEYS}
    seg_loss = task["seg_loss"].float() if "seg_loss" in task else zero
    det_loss = task["det_loss"].float() if "det_loss" in task else zero
    out.update({k: zero for k in ("seg_kd", "det_kd", "feat_kd", "det_kd_box", "det_kd_obj", "det_kd_cls")})
    out.update({k: zero for k in ("temperature", "alpha_seg", "alpha_det")})
    out.update(seg_loss=seg_loss, det_loss=det_loss, seg_total=seg_loss, det_total=det_loss)
    names = seg_task_names(task)
    if not names:
        out["loss"] = ratio_det * det_loss + ratio_seg * seg_loss
        return out
    weighted = zero
    for name in names:
        loss_t = task[f"seg_loss/{name}"].float()
        out.update({f"seg_kd/{name}": zero, f"seg_total/{name}": loss_t, f"alpha_seg/{name}": zero})
        weighted = weighted + (seg_ratios or {}).get(name, ratio_seg) * loss_t
    out["loss"] = ratio_det * det_loss + weighted
    return out
