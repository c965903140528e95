"""Golden values of the study statistics: per-arm mean/std, the paired t interval, gap recovered, verdicts."""

from __future__ import annotations

import math

import pytest

from mtkd.study import stats

FT = [0.50, 0.52, 0.48]
KD_NOISY = [0.55, 0.56, 0.50]  # d = [0.05, 0.04, 0.02]: positive mean, interval includes 0
KD_BETTER = [0.55, 0.58, 0.52]  # d = [0.05, 0.06, 0.04]: interval above 0


def test_summarize_is_mean_and_sample_std():
    s = stats.summarize(FT)
    assert s["values"] == FT
    assert s["mean"] == pytest.approx(0.50)
    assert s["std"] == pytest.approx(0.02)  # sqrt((0.0004 + 0.0004) / (3 - 1))


def test_paired_difference_golden_values():
    d = stats.paired_difference(KD_NOISY, FT)
    assert d["values"] == pytest.approx([0.05, 0.04, 0.02])
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(0.11 / 3)
    # by hand: deviations 0.01333, 0.00333, -0.01667 -> variance 2.3333e-4 (n - 1) -> std 0.0152753
    assert d["std"] == pytest.approx(math.sqrt(7e-4 / 3))
    assert d["t_crit"] == pytest.approx(4.302652729749462)  # t(0.975, 2)
    half = 4.302652729749462 * math.sqrt(7e-4 / 3) / math.sqrt(3)
    assert d["ci95"] == pytest.approx([0.11 / 3 - half, 0.11 / 3 + half])
    assert d["ci95"] == pytest.approx([-0.0012791637, 0.0746124970])
    assert d["verdict"] == "not distinguishable from noise"


def test_paired_interval_matches_scipy_ttest_rel():
    from scipy.stats import ttest_rel

    for kd in (KD_NOISY, KD_BETTER):
        ci = ttest_rel(kd, FT).confidence_interval(0.95)
        assert stats.paired_difference(kd, FT)["ci95"] == pytest.approx([ci.low, ci.high], abs=1e-12)


def test_verdicts_for_both_signs_and_the_boundary():
    better = stats.paired_difference(KD_BETTER, FT)
    assert better["ci95"] == pytest.approx([0.0251586229, 0.0748413771])
    assert better["verdict"] == "distillation better"
    worse = stats.paired_difference(FT, KD_BETTER)
    assert worse["ci95"] == pytest.approx([-0.0748413771, -0.0251586229])
    assert worse["verdict"] == "fine-tuning better"
    assert stats.verdict(0.0, 0.1) == stats.verdict(-0.1, 0.0) == "not distinguishable from noise"
    assert stats.verdict(1e-9, 0.1) == "distillation better"
    assert stats.verdict(-0.1, -1e-9) == "fine-tuning better"
    assert stats.verdict(None, None) == "n/a"


def test_two_seeds_use_one_degree_of_freedom():
    d = stats.paired_difference([0.3, 0.5], [0.2, 0.2])
    assert d["t_crit"] == pytest.approx(12.706204736174694)
    assert d["mean"] == pytest.approx(0.2) and d["std"] == pytest.approx(math.sqrt(0.02))
    assert d["ci95"][0] < 0 < d["ci95"][1]  # +0.2 on 2 seeds is still noise


def test_identical_arms_are_noise_not_a_win():
    d = stats.paired_difference([0.4, 0.4], [0.4, 0.4])
    assert d["ci95"] == [0.0, 0.0] and d["verdict"] == "not distinguishable from noise"


def test_gap_recovered():
    assert stats.gap_recovered(0.8, 0.6, 0.7) == pytest.approx(0.5)
    assert stats.gap_recovered(0.8, 0.6, 0.8) == pytest.approx(1.0)
    assert stats.gap_recovered(0.8, 0.6, 0.5) == pytest.approx(-0.5)
    assert stats.gap_recovered(0.6, 0.6, 0.7) is None  # no gap to recover
    assert stats.gap_recovered(0.5, 0.6, 0.7) is None
    assert stats.gap_recovered(None, 0.6, 0.7) is None


def test_missing_values_give_no_statistics():
    assert stats.summarize([0.1, None])["mean"] is None
    d = stats.paired_difference([0.1, None], [0.1, 0.2])
    assert d["ci95"] is None and d["verdict"] == "n/a"
    assert "n/a" in stats.verdict_line("mIoU", d)
    with pytest.raises(ValueError):
        stats.paired_difference([0.1, 0.2], [0.1])


def test_verdict_line_wording():
    line = stats.verdict_line("mAP50_95", stats.paired_difference(KD_NOISY, FT))
    assert line == (
        "mAP50-95: distillation − fine-tuning = +3.67 pp, 95% interval [-0.13, +7.46] pp (3 seeds): "
        "not distinguishable from noise"
    )
    assert stats.verdict_line("mIoU", stats.paired_difference(KD_BETTER, FT)).endswith(
        ": distillation better"
    )
