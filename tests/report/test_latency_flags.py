"""Latency figures the report can stand behind: flags on synthetic speed blocks, the flags in a written report,
and ``--measure-latency`` (a real interleaved measurement on tiny checkpoints; times are never asserted)."""

from __future__ import annotations

import json
import re

import pytest

from mtkd.errors import ConfigError
from mtkd.report.latency import NOISE_FLOOR, P90_P50_MAX, SPREAD_MAX, LatencyCheck
from mtkd.report.report import main


def speed(p50, *, p90=None, spread=0.02, rounds=3, device="cpu", threads=2, imgsz=128):
    s = {"device": device, "threads": threads, "batch": 1, "imgsz": imgsz, "latency_ms_p50": p50}
    s["latency_ms_p90"] = p50 * 1.05 if p90 is None else p90
    s.update(throughput_ips=100.0, throughput_batch=8)
    if rounds is not None:
        s.update(latency_rounds=rounds, latency_round_spread=spread, latency_stable=spread <= 0.05)
    return s


def entry(name, sp, params=1_000_000, flops=2e9):
    return name, {"model": {"name": name, "params": params, "flops": flops}, "speed": sp}


def test_thresholds_are_sane():
    assert 1 < P90_P50_MAX < 2 and 0 < NOISE_FLOOR < SPREAD_MAX < 0.5


def test_a_clear_difference_keeps_its_delta():
    check = LatencyCheck([entry("teacher", speed(10.0), 4_000_000, 8e9), entry("student", speed(6.0))])
    assert check.cell(0, "latency_ms_p50", "10.000") is None  # baseline: value only
    assert check.cell(1, "latency_ms_p50", "6.000") is None  # the usual delta cell
    assert check.notes() == [] and check.unreliable(1) == []


def test_disturbed_passes_and_moving_medians_are_unreliable():
    check = LatencyCheck(
        [
            entry("teacher", speed(10.0), 4_000_000, 8e9),
            entry("busy", speed(5.0, p90=9.0)),
            entry("drifting", speed(5.0, spread=0.25, rounds=20), 2_000_000, 3e9),
        ]
    )
    assert check.cell(1, "latency_ms_p50", "5.000") == "5.000 (unreliable [1])"
    assert check.cell(2, "latency_ms_p50", "5.000") == "5.000 (unreliable [2])"
    assert check.cell(2, "latency_ms_p90", "5.250") == "5.250 (unreliable [2])"  # same note, same number
    notes = check.notes()
    assert "p90/p50 = 1.80 > 1.3" in notes[0] and notes[0].startswith("[1] busy:")
    assert "run-to-run spread 25% > 10% over 20 rounds" in notes[1]


def test_same_architecture_apart_beyond_noise_is_unreliable_not_a_delta():
    """The issue's demo report: two students of one architecture at 1057 and 510 ms, the teacher at 377."""
    check = LatencyCheck(
        [
            entry("teacher", speed(377.0), 4_000_000, 8e9),
            entry("finetuned", speed(1057.0, spread=0.04)),
            entry("distilled", speed(510.0, spread=0.04)),
        ]
    )
    assert check.cell(1, "latency_ms_p50", "1057.000") == "1057.000 (unreliable [1])"
    assert check.cell(2, "latency_ms_p50", "510.000") == "510.000 (unreliable [2])"
    n1, n2 = check.notes()
    assert "same architecture as distilled (1.000 M params, 2.000 GFLOPs)" in n1
    assert "p50 1057.000 vs 510.000 ms: 107% apart" in n1 and "same architecture as finetuned" in n2
    assert check.cell(0, "latency_ms_p50", "377.000") is None  # the teacher is not involved


def test_same_architecture_within_noise_and_a_delta_within_noise():
    check = LatencyCheck(
        [
            entry("teacher", speed(10.0, spread=0.04), 4_000_000, 8e9),
            entry("a", speed(8.0, spread=0.04)),
            entry("b", speed(8.1, spread=0.04)),  # same arch, 1.2% apart < noise ±0.32 ms
            entry("c", speed(10.2, spread=0.04), 2_000_000, 3e9),  # other arch, 2% slower than the teacher
        ]
    )
    assert check.unreliable(1) == [] and check.unreliable(2) == []
    assert check.cell(1, "latency_ms_p50", "8.000") is None
    assert check.cell(3, "latency_ms_p50", "10.200") == "10.200 (≈ within noise [1])"
    assert (
        "c vs teacher: p50 differs by +0.200 ms (+2.0%), within the measured noise (±0.404 ms)"
        in (check.notes()[0])
    )
    assert check.cell(3, "latency_ms_p90", "10.710") is None  # p90 keeps its delta


def test_an_unreliable_baseline_makes_every_delta_unreliable():
    check = LatencyCheck([entry("teacher", speed(10.0, p90=20.0), 4e6, 8e9), entry("s", speed(5.0))])
    assert check.cell(0, "latency_ms_p50", "10.000") == "10.000 (unreliable [1])"
    assert check.cell(1, "latency_ms_p50", "5.000") == "5.000 (unreliable [1])"


def test_different_setups_are_not_compared():
    check = LatencyCheck(
        [
            entry("teacher", speed(10.0), 4e6, 8e9),
            entry("gpu", speed(1.0, device="cuda:0")),
            entry("threads", speed(5.0, threads=8)),
            entry("size", speed(5.0, imgsz=[128, 256])),
            entry("same", speed(5.0, imgsz=[128, 128])),  # [128, 128] == 128
        ]
    )
    for j in (1, 2, 3):
        assert "(not comparable [" in check.cell(j, "latency_ms_p50", "x")
        assert "(not comparable [" in check.cell(j, "throughput_ips", "x")
    assert check.cell(4, "latency_ms_p50", "5.000") is None
    assert "measured on cuda:0, batch 1, 128 px, the baseline teacher on cpu, 2 threads" in check.notes()[0]
    # same params/FLOPs on different setups: no same-architecture verdict (nothing to compare)
    assert all(check.unreliable(j) == [] for j in range(5))


def test_older_json_without_rounds_uses_p90_minus_p50_as_noise():
    legacy = [entry("teacher", speed(10.0, p90=12.0, rounds=None), 4e6, 8e9)]
    check = LatencyCheck([*legacy, entry("s", speed(9.0, p90=10.5, rounds=None))])
    assert check.cell(1, "latency_ms_p50", "9.000") == "9.000 (≈ within noise [1])"  # 1 < (2 + 1.5) / 2
    assert check.measured_text(1) == "one series of timings, spread not recorded"
    check = LatencyCheck([*legacy, entry("s", speed(5.0, p90=5.5, rounds=None))])
    assert check.cell(1, "latency_ms_p50", "5.000") is None


def report_inputs(tmp_path, entries):
    paths = []
    for name, m in entries:
        m = {**m, "seg": {"mIoU": 0.5}, "data": {"yaml": "d.yaml", "split": "val", "images": 4}}
        (tmp_path / f"{name}.json").write_text(json.dumps(m))
        paths.append(str(tmp_path / f"{name}.json"))
    return paths


def test_report_flags_same_architecture_students_and_keeps_a_real_delta(tmp_path):
    paths = report_inputs(
        tmp_path,
        [
            entry("teacher", speed(377.0), 4_000_000, 8e9),
            entry("finetuned", speed(1057.0)),
            entry("distilled", speed(510.0)),
            entry("tiny", speed(100.0), 250_000, 5e8),
        ],
    )
    out = tmp_path / "r"
    assert main([*paths, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    summary = md[md.index("## Summary") : md.index("## All metrics")]
    assert "1057.000 (unreliable [1])" in summary and "510.000 (unreliable [2])" in summary
    assert "+180" not in summary and "+35" not in summary  # no confident delta for them
    assert "100.000 (-277.000, -73.5%)" in summary  # a clearly different model keeps its delta
    assert re.search(r"- \[1\] finetuned: latency unreliable: same architecture as distilled", md)
    assert "--measure-latency" in md and "3 rounds, run-to-run spread 2.0%" in md
    html = (out / "report.html").read_text()
    assert '<span class="delta warn">(unreliable [1])</span>' in html
    assert '<span class="delta">(-277.000, -73.5%)</span>' in html


def test_measure_latency_options_need_the_flag(tmp_path):
    paths = report_inputs(tmp_path, [entry("teacher", speed(10.0))])
    with pytest.raises(ConfigError, match="only apply with --measure-latency"):
        main([*paths, "--out", str(tmp_path / "r"), "--device", "cpu"])
    with pytest.raises(ConfigError, match="no checkpoint for teacher"):
        main([*paths, "--out", str(tmp_path / "r"), "--measure-latency"])


def test_measure_latency_times_the_checkpoints_interleaved(tmp_path):
    """A short real measurement of two tiny checkpoints (structure only: times are never asserted)."""
    pytest.importorskip("mtkd.models.build", reason="models not available")
    from mtkd.checkpoint import save_checkpoint
    from mtkd.models import build_model, model_state

    entries = []
    for name in ("teacher", "student"):
        model = build_model("yolo_mt_n", nc_det=2, nc_seg=3)
        w = save_checkpoint({"model": model_state(model), "config": {"imgsz": 32}}, tmp_path / f"{name}.pt")
        sp = speed(50.0 if name == "teacher" else 5.0, imgsz=32)
        sp["throughput_ips"] = 123.0
        n, m = entry(name, sp)
        m["model"]["weights"] = str(w) if name == "teacher" else f"{name}.pt"  # relative: from the JSON
        del m["model"]["flops"]
        entries.append((n, m))
    paths = report_inputs(tmp_path, entries)
    out = tmp_path / "r"
    assert main([*paths, "--out", str(out), "--measure-latency", "--speed-budget", "3"]) == 0
    lat = json.loads((out / "latency.json").read_text())
    assert lat["method"] == "interleaved" and set(lat["models"]) == {"teacher", "student"}
    t = lat["models"]["teacher"]
    assert t["latency_method"] == "interleaved" and t["latency_interleaved_with"] == ["student"]
    assert t["imgsz"] == 32 and t["latency_rounds"] == len(t["latency_round_ms"]) >= 1
    md = (out / "report.md").read_text()
    assert "interleaved with 1 other model" in md and "123.0 img/s at batch 8" in md  # throughput kept
    assert "50.000" not in md  # the eval run's latency was replaced
