"""Speed/size helpers on a tiny conv net with hand-computed FLOPs and parameter counts; the latency stopping
rule on scripted timings (deterministic: injected blocks and clock), and one short real measurement whose
times are never asserted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtkd.eval.speed import (
    count_flops,
    count_params,
    file_size_mb,
    is_stable,
    measure_latency,
    measure_latency_interleaved,
    measure_throughput,
    relative_spread,
    run_rounds,
    steadiest_window,
    summarize_rounds,
)


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False)
    )


def test_params_and_flops_by_hand():
    m = tiny()
    assert count_params(m) == (3 * 8 * 9 + 8) + 2 * 8 + 8 * 4
    m[0].weight.requires_grad_(False)
    assert count_params(m, trainable_only=True) == 8 + 2 * 8 + 8 * 4
    h, w = 32, 48
    macs = h * w * 8 * 3 * 9 + h * w * 4 * 8  # conv MACs; bias/BN/ReLU are not counted by FlopCounterMode
    assert count_flops(m, (h, w)) == 2 * macs
    assert count_flops(m, 32, batch=2) == 2 * 2 * (32 * 32 * 8 * 27 + 32 * 32 * 32)


def test_latency_and_throughput_records_setup():
    m = tiny().train()
    lat = measure_latency(m, 32, device="cpu", warmup=1, iters=5)
    assert lat["device"] == "cpu" and lat["batch"] == 1 and lat["imgsz"] == 32
    assert lat["threads"] == torch.get_num_threads()
    assert 0 < lat["latency_ms_p50"] <= lat["latency_ms_p90"]
    thr = measure_throughput(m, (32, 64), batch=4, warmup=1, iters=3)
    assert thr["throughput_batch"] == 4 and thr["throughput_ips"] > 0
    assert m.training  # mode restored
    with pytest.raises(ValueError):
        measure_latency(m, 32, iters=0)


def test_file_size(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"\0" * 3 * 2**20)
    assert file_size_mb(f) == 3.0


# ---------------------------------------------------------------- rounds until stable (scripted timings)


def scripted(*rounds):
    """A block that returns the given rounds of timings (ms) one after another, then repeats the last."""
    it = iter(rounds)
    last = [rounds[-1]]

    def block():
        last[0] = next(it, last[0])
        return last[0]

    return block


class FakeClock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def test_relative_spread_and_stability():
    assert relative_spread([10.0]) is None
    assert relative_spread([9.0, 10.0, 11.0]) == pytest.approx(0.2)
    assert is_stable([20.0, 10.0, 10.2, 10.1], 3, 0.05)  # only the last 3 rounds count
    assert not is_stable([10.0, 10.2], 3, 0.05)  # too few rounds
    assert not is_stable([10.0, 12.0, 10.0], 3, 0.05)


def test_rounds_stop_when_the_medians_agree():
    rounds, stop = run_rounds({"m": scripted([10, 10, 10])}, clock=FakeClock(0.0))
    assert stop == "stable" and len(rounds["m"]) == 3
    # a disturbed first round: timing goes on until the last 3 rounds agree, and the stats skip round 1
    rounds, stop = run_rounds(
        {"m": scripted([30, 31, 29], [10, 11, 12], [10, 12, 14], [11, 11, 11])},
        rel_tol=0.1,
        clock=FakeClock(0.0),
    )
    assert stop == "stable" and len(rounds["m"]) == 4
    s = summarize_rounds(rounds["m"], min_rounds=3)
    assert s["latency_ms_p50"] == 11.0 and s["latency_samples"] == 9
    assert s["latency_round_ms"] == [30.0, 11.0, 12.0, 11.0] and s["latency_rounds"] == 4
    assert s["latency_round_spread"] == pytest.approx(1 / 11, abs=1e-6)
    assert s["latency_ms_iqr"] == pytest.approx(12.0 - 11.0)
    assert s["latency_ms_p90"] == pytest.approx(12.4)
    assert s["latency_ms_mean"] == pytest.approx(102 / 9)


def test_rounds_stop_at_max_rounds_or_budget():
    noisy = [[10.0], [20.0]] * 20
    rounds, stop = run_rounds({"m": scripted(*noisy)}, max_rounds=6, clock=FakeClock(0.0))
    assert stop == "max_rounds" and len(rounds["m"]) == 6
    rounds, stop = run_rounds({"m": scripted(*noisy)}, budget_s=3.5, clock=FakeClock(1.0))
    assert stop == "budget" and len(rounds["m"]) == 4  # the fake clock: k seconds elapsed after round k
    rounds, stop = run_rounds({"m": scripted(*noisy)}, budget_s=0, clock=FakeClock(1.0))
    assert stop == "budget" and len(rounds["m"]) == 1  # at least one round
    s = summarize_rounds(rounds["m"])
    assert s["latency_round_spread"] is None and s["latency_rounds"] == 1
    with pytest.raises(ValueError):
        run_rounds({"m": scripted([1.0])}, min_rounds=1)
    with pytest.raises(ValueError):
        run_rounds({"m": scripted([])})


def test_an_unsteady_measurement_is_summarized_over_its_steadiest_common_window():
    a = [[10.0], [20.0], [10.0], [10.2], [10.1], [20.0], [10.0]]
    b = [[5.0], [9.0], [5.0], [5.0], [5.05], [9.0], [5.0]]
    assert steadiest_window({"a": a, "b": b}, 3) == 2  # rounds 3-5: the quiet stretch of both
    s = summarize_rounds(a, min_rounds=3, start=2)
    assert s["latency_ms_p50"] == 10.1 and s["latency_window"] == [3, 5] and s["latency_rounds"] == 7
    assert s["latency_round_spread"] == pytest.approx(0.2 / 10.1, abs=1e-6)
    assert summarize_rounds(a, min_rounds=3)["latency_window"] == [5, 7]  # default: the last rounds
    flat = [[1.0]] * 6
    assert steadiest_window({"a": flat, "b": flat}, 3) == 3  # a tie keeps the latest window
    assert steadiest_window({"a": flat[:2]}, 3) == 0


def test_rounds_interleave_models_in_rotating_order():
    calls = []

    def block(name, ms):
        def run():
            calls.append(name)
            return [ms]

        return run

    rounds, stop = run_rounds(
        {"a": block("a", 5.0), "b": block("b", 7.0), "c": block("c", 9.0)}, clock=FakeClock(0.0)
    )
    assert stop == "stable" and calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [len(r) for r in rounds.values()] == [3, 3, 3]
    # every model must be stable: one noisy model keeps all of them going
    rounds, stop = run_rounds(
        {"a": block("a", 5.0), "n": scripted(*[[10.0], [20.0]] * 5)}, max_rounds=5, clock=FakeClock(0.0)
    )
    assert stop == "max_rounds" and len(rounds["a"]) == 5


def test_real_repeated_and_interleaved_measurement_records_its_rounds():
    """A short real measurement: only the record's structure is checked, never the times."""
    lat = measure_latency(tiny(), 16, device="cpu", warmup=1, iters=3, max_rounds=4, budget_s=5)
    assert lat["latency_method"] == "repeated" and lat["latency_passes_per_round"] == 1
    assert 1 <= lat["latency_rounds"] <= 4 and len(lat["latency_round_ms"]) == lat["latency_rounds"]
    assert lat["latency_stop"] in ("stable", "max_rounds", "budget")
    assert lat["latency_stable"] == (lat["latency_stop"] == "stable")
    assert lat["latency_ms_p50"] <= lat["latency_ms_p90"] and lat["latency_ms_iqr"] >= 0
    both = measure_latency_interleaved(
        {"a": tiny(), "b": tiny()}, {"a": 16, "b": (16, 24)}, iters=4, max_rounds=3, budget_s=5
    )
    assert both["a"]["latency_method"] == "interleaved" and both["a"]["latency_interleaved_with"] == ["b"]
    assert both["b"]["imgsz"] == [16, 24] and both["a"]["latency_rounds"] == both["b"]["latency_rounds"]
    assert both["a"]["latency_passes_per_round"] == 2  # ceil(4 / 3 rounds)
