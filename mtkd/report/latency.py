"""Which latency figures of a report can be trusted, and what the delta column says instead when not.

An entry's latency is **unreliable** when any of these holds (thresholds below):
  - ``p90 / p50 > P90_P50_MAX``: the single passes were disturbed (a busy machine, an unsteady clock);
  - run-to-run spread ``latency_round_spread > SPREAD_MAX``: the median itself moved between rounds;
  - another entry has the same architecture (same parameter count and FLOPs, measured on the same setup) but
    their p50s differ by more than the measured noise — same compute, different time: the machine, not the
    model, made the difference.
A latency delta against the baseline (first entry) is then shown as
  - ``unreliable [n]`` when the entry's or the baseline's latency is unreliable;
  - ``not comparable [n]`` when the two were measured on different setups (device, batch, image size, CPU
    threads);
  - ``≈ within noise [n]`` when ``|p50 - p50_baseline|`` is within the measured noise of the pair;
  - the usual absolute and relative delta otherwise.
``[n]`` refers to a numbered note under the summary that gives the reason with the numbers.

**Noise** of one entry: the range of its round medians, ``max(latency_round_spread, NOISE_FLOOR) * p50``; an
eval JSON of an older mtkd (one series of timings, no rounds) uses ``p90 - p50`` instead (at least the floor).
Two p50s differ by more than the noise when ``|a - b| > (noise_a + noise_b) / 2``, i.e. when the ranges of
their round medians do not overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

P90_P50_MAX = 1.3
SPREAD_MAX = 0.10
NOISE_FLOOR = 0.03

DEFINITION = (
    f"**Latency flags**: a latency is marked *unreliable* when p90/p50 > {P90_P50_MAX}, when its run-to-run "
    f"spread (max − min of the round medians / median) > {SPREAD_MAX:.0%}, or when models of the same "
    "architecture (same parameters and FLOPs, same setup) differ by more than the measured noise; a delta "
    "within the noise of both measurements (the ranges of their round medians overlap, at least "
    f"±{NOISE_FLOOR / 2:.1%} each) is shown as ≈. Figures measured on different devices, batch sizes, image "
    "sizes or CPU thread counts are not compared."
)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class _Timing:
    name: str
    p50: float | None
    p90: float | None
    spread: float | None
    rounds: int | None
    setup: tuple
    arch: tuple[float, float] | None
    reasons: list[str] = field(default_factory=list)

    @property
    def noise(self) -> float:
        """Range (ms) within which this p50 could have come out (module docstring)."""
        assert self.p50 is not None
        floor = NOISE_FLOOR * self.p50
        if self.spread is not None:
            return max(self.spread * self.p50, floor)
        if self.p90 is not None:
            return max(self.p90 - self.p50, floor)
        return floor


def _setup(speed: dict[str, Any]) -> tuple:
    size = speed.get("imgsz")
    size = tuple(size) if isinstance(size, list) else (size, size) if isinstance(size, int) else size
    device = str(speed.get("device"))
    threads = speed.get("threads") if device.startswith("cpu") else None
    return (device, speed.get("batch", 1), size, threads)


def _setup_text(speed: dict[str, Any]) -> str:
    threads = f", {speed.get('threads')} threads" if str(speed.get("device")).startswith("cpu") else ""
    return f"{speed.get('device')}{threads}, batch {speed.get('batch', 1)}, {speed.get('imgsz')} px"


def _timing(name: str, metrics: dict[str, Any]) -> _Timing:
    speed = metrics.get("speed") or {}
    model = metrics.get("model") or {}
    params, flops = _num(model.get("params")), _num(model.get("flops"))
    rounds = speed.get("latency_rounds")
    return _Timing(
        name,
        _num(speed.get("latency_ms_p50")),
        _num(speed.get("latency_ms_p90")),
        _num(speed.get("latency_round_spread")),
        int(rounds) if _num(rounds) is not None else None,
        _setup(speed),
        (params, flops) if params is not None and flops is not None else None,
    )


def _apart(a: float, b: float) -> str:
    lo = min(a, b)
    return f"{abs(a - b) / lo:.0%}" if lo > 0 else f"{abs(a - b):.3f} ms"


def differ_beyond_noise(a: _Timing, b: _Timing) -> bool:
    """The two p50s are further apart than half the sum of their noise ranges (module docstring)."""
    assert a.p50 is not None and b.p50 is not None
    return abs(a.p50 - b.p50) > (a.noise + b.noise) / 2


class LatencyCheck:
    """Flags for the latencies of a report's entries (first = baseline) and the notes that explain them.

    ``cell(j, key, text)`` gives the table cell of entry ``j`` for a latency ``key`` (``latency_ms_p50``,
    ``latency_ms_p90``, ``throughput_ips``) or ``None`` where the usual delta cell stands; ``notes()`` the
    numbered notes the cells refer to, in order of first use.
    """

    def __init__(self, entries: Sequence[tuple[str, dict[str, Any]]]):
        self.speeds = [m.get("speed") or {} for _, m in entries]
        self.t = [_timing(n, m) for n, m in entries]
        self._notes: list[str] = []
        for t in self.t:
            if t.p50 is None:
                continue
            if t.p90 is not None and t.p50 > 0 and t.p90 / t.p50 > P90_P50_MAX:
                t.reasons.append(
                    f"p90/p50 = {t.p90 / t.p50:.2f} > {P90_P50_MAX} (single passes were disturbed)"
                )
            if t.spread is not None and t.spread > SPREAD_MAX:
                t.reasons.append(
                    f"run-to-run spread {t.spread:.0%} > {SPREAD_MAX:.0%} over {t.rounds} rounds "
                    "(the median moved between rounds)"
                )
        for i, a in enumerate(self.t):
            for b in self.t[i + 1 :]:
                if (
                    a.p50 is not None
                    and b.p50 is not None
                    and a.arch is not None
                    and a.arch == b.arch
                    and a.setup == b.setup
                    and differ_beyond_noise(a, b)
                ):
                    for x, y in ((a, b), (b, a)):
                        x.reasons.append(
                            f"same architecture as {y.name} ({x.arch[0] / 1e6:.3f} M params, "
                            f"{x.arch[1] / 1e9:.3f} GFLOPs) but p50 {x.p50:.3f} vs {y.p50:.3f} ms: "
                            f"{_apart(x.p50, y.p50)} apart, more than the measured "
                            f"noise (±{(x.noise + y.noise) / 2:.3f} ms)"
                        )

    def _ref(self, text: str) -> int:
        if text not in self._notes:
            self._notes.append(text)
        return self._notes.index(text) + 1

    def _own_ref(self, j: int) -> int | None:
        t = self.t[j]
        return (
            self._ref(f"{t.name}: latency unreliable: " + "; ".join(t.reasons) + ".") if t.reasons else None
        )

    def unreliable(self, j: int) -> list[str]:
        """Why entry ``j``'s latency is unreliable (empty: no reason found)."""
        return list(self.t[j].reasons)

    def comparable(self, j: int) -> bool:
        return self.t[j].setup == self.t[0].setup

    def cell(self, j: int, key: str, text: str) -> str | None:
        """The cell for entry ``j``'s ``key`` shown as ``text`` (value only), or ``None``: keep the usual delta."""
        t, base = self.t[j], self.t[0]
        latency = key.startswith("latency_")
        value = _num(self.speeds[j].get(key))
        if value is None:
            return None
        if j == 0:
            ref = self._own_ref(0) if latency else None
            return f"{text} (unreliable [{ref}])" if ref else None
        if _num(self.speeds[0].get(key)) is None:
            return None
        if not self.comparable(j):
            ref = self._ref(
                f"{t.name}: measured on {_setup_text(self.speeds[j])}, the baseline {base.name} on "
                f"{_setup_text(self.speeds[0])}: no delta."
            )
            return f"{text} (not comparable [{ref}])"
        if not latency:
            return None
        refs = [r for r in (self._own_ref(j), self._own_ref(0)) if r is not None]
        if refs:
            return f"{text} (unreliable [{', '.join(map(str, refs))}])"
        if key == "latency_ms_p50" and t.p50 is not None and base.p50 is not None:
            if not differ_beyond_noise(t, base):
                d = t.p50 - base.p50
                rel = f" ({d / base.p50:+.1%})" if base.p50 else ""
                ref = self._ref(
                    f"{t.name} vs {base.name}: p50 differs by {d:+.3f} ms{rel}, within the measured noise "
                    f"(±{(t.noise + base.noise) / 2:.3f} ms)."
                )
                return f"{text} (≈ within noise [{ref}])"
        return None

    def notes(self) -> list[str]:
        return [f"[{i}] {n}" for i, n in enumerate(self._notes, 1)]

    def measured_text(self, j: int) -> str:
        """How entry ``j``'s latency was measured: ``"3 rounds, spread 2.1%, interleaved with 3 models"``."""
        s, t = self.speeds[j], self.t[j]
        if t.rounds is None:
            return "one series of timings, spread not recorded"
        spread = "-" if t.spread is None else f"{t.spread:.1%}"
        how = f"{t.rounds} rounds, run-to-run spread {spread}"
        if s.get("latency_stable") is False:
            how += f", not stable ({s.get('latency_stop')})"
            window = s.get("latency_window")
            if isinstance(window, list) and len(window) == 2:
                how += f", figures from the steadiest rounds {window[0]}-{window[1]}"
        others = s.get("latency_interleaved_with")
        if isinstance(others, list) and others:
            how += f", interleaved with {len(others)} other model{'s' if len(others) > 1 else ''}"
        return how
