"""The statistics of a seed study: per-arm summaries, the paired distillation − fine-tuning difference with its
Student-t interval, the fraction of the teacher–fine-tuning gap that distillation recovers, and the verdict.

Definitions (``n`` seeds, arm values ``ft_i`` and ``kd_i`` of seed ``i``):

- ``mean`` and ``std`` of an arm: the sample mean and the sample standard deviation (``ddof=1``);
- the paired difference ``d_i = kd_i - ft_i`` (the same seed pairs the two arms: same initial weights of the
  student, same data order and augmentation); ``mean`` = mean of ``d``, ``std`` = its sample std,
  ``ci95 = mean ± t(0.975, n-1) · std / sqrt(n)`` with ``t`` from ``scipy.stats.t`` (``n >= 2``);
- ``gap_recovered = (mean(kd) - mean(ft)) / (teacher - mean(ft))``; ``None`` when fine-tuning already matches or
  beats the teacher (``teacher - mean(ft) <= 0``: there is no gap to recover);
- the verdict: ``"not distinguishable from noise"`` when the interval includes 0, else
  ``"distillation better"`` (interval above 0) or ``"fine-tuning better"`` (below 0).

A metric that is ``None`` for any seed (the task is missing) gives ``None`` statistics and the verdict ``"n/a"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

METRICS = ("mAP50", "mAP50_95", "mIoU")
LABELS = {"mAP50": "mAP50", "mAP50_95": "mAP50-95", "mIoU": "mIoU"}
CONFIDENCE = 0.95
NOISE = "not distinguishable from noise"
KD_BETTER = "distillation better"
FT_BETTER = "fine-tuning better"
NOT_AVAILABLE = "n/a"


def _complete(values: Sequence[float | None]) -> list[float] | None:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return [float(v) for v in values]  # type: ignore[arg-type]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample std with ddof=1)``; the std of a single value is 0."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std: no values")
    m = math.fsum(values) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def summarize(values: Sequence[float | None]) -> dict:
    """``{"values", "mean", "std"}`` of one metric of one arm over the seeds (``None`` stats if any is None)."""
    vals = _complete(values)
    if not vals:
        return {"values": list(values), "mean": None, "std": None}
    m, s = mean_std(vals)
    return {"values": vals, "mean": m, "std": s}


def t_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(low, high, t_crit)``: the Student-t interval of the mean of ``diffs`` (``n - 1`` degrees of freedom)."""
    from scipy import stats

    n = len(diffs)
    if n < 2:
        raise ValueError(f"t_interval: needs at least 2 values, got {n}")
    m, s = mean_std(diffs)
    t_crit = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    half = t_crit * s / math.sqrt(n)
    return m - half, m + half, t_crit


def verdict(low: float | None, high: float | None) -> str:
    """The wording of a paired interval: noise when it includes 0 (either end may touch 0), else the better arm."""
    if low is None or high is None:
        return NOT_AVAILABLE
    if low <= 0.0 <= high:
        return NOISE
    return KD_BETTER if low > 0.0 else FT_BETTER


def paired_difference(
    kd: Sequence[float | None], ft: Sequence[float | None], confidence: float = CONFIDENCE
) -> dict:
    """The paired ``kd - ft`` difference over seeds: ``values``, ``mean``, ``std``, ``n``, ``t_crit``,
    ``ci95`` (``[low, high]``) and ``verdict``. ``kd`` and ``ft`` are aligned by seed."""
    if len(kd) != len(ft):
        raise ValueError(f"paired_difference: {len(kd)} distillation values but {len(ft)} fine-tuning values")
    a, b = _complete(kd), _complete(ft)
    n = len(kd)
    if a is None or b is None or n < 2:
        return {
            "values": None,
            "mean": None,
            "std": None,
            "n": n,
            "t_crit": None,
            "ci95": None,
            "verdict": NOT_AVAILABLE,
        }
    diffs = [x - y for x, y in zip(a, b)]
    m, s = mean_std(diffs)
    low, high, t_crit = t_interval(diffs, confidence)
    return {
        "values": diffs,
        "mean": m,
        "std": s,
        "n": n,
        "t_crit": t_crit,
        "ci95": [low, high],
        "verdict": verdict(low, high),
    }


def gap_recovered(teacher: float | None, ft_mean: float | None, kd_mean: float | None) -> float | None:
    """``(kd - ft) / (teacher - ft)`` of the means; ``None`` when a value is missing or there is no gap
    (``teacher <= ft``). 1 = distillation closes the whole gap, 0 = no gain, < 0 = worse than fine-tuning."""
    if teacher is None or ft_mean is None or kd_mean is None:
        return None
    gap = teacher - ft_mean
    if gap <= 0.0:
        return None
    return (kd_mean - ft_mean) / gap


def verdict_line(metric: str, diff: dict, unit: float = 100.0, suffix: str = " pp") -> str:
    """``"mAP50: distillation − fine-tuning = +1.20 pp, 95% interval [+0.40, +2.00] pp (3 seeds):
    distillation better"`` (values times ``unit``)."""
    label = LABELS.get(metric, metric)
    if diff.get("ci95") is None:
        return f"{label}: {NOT_AVAILABLE} (metric missing or fewer than 2 seeds)"
    low, high = diff["ci95"]
    return (
        f"{label}: distillation − fine-tuning = {unit * diff['mean']:+.2f}{suffix}, "
        f"{round(100 * CONFIDENCE)}% interval [{unit * low:+.2f}, {unit * high:+.2f}]{suffix} "
        f"({diff['n']} seeds): {diff['verdict']}"
    )
