"""Timing training steps the way ``mtkd benchmark`` reports them: device-synchronized timers, the per-phase
breakdown of instrumented steps (``phases_ms``) and ratios of timings taken back to back."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU, whose kernels run synchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    """Seconds ``fn()`` takes, its device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def paired_ratio(num: list[float], *den: list[float]) -> float:
    """Median over iterations ``i`` of ``num[i] / sum(d[i] for d in den)``: each ratio compares timings taken
    back to back (one round of the interleaved loop), so a change in background load between rounds cancels,
    which a ratio of separate medians does not (on the shared 2-core CPU it moved by +-0.03 between runs)."""
    return statistics.median(n / sum(ds) for n, *ds in zip(num, *den))


class Phases:
    """Times the phases of instrumented training steps (seconds per phase of the current step; medians in ms)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: list[dict[str, float]] = []
        self.cur: dict[str, float] = {}
        self._t0: dict[str, float] = {}
        self._undo: list[Any] = []

    def _start(self, name: str) -> None:
        sync(self.device)
        self._t0[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        sync(self.device)
        self.cur[name] = self.cur.get(name, 0.0) + time.perf_counter() - self._t0.pop(name)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Time ``owner.attr(...)`` calls as phase ``name`` (an instance attribute shadowing it until ``remove``)."""
        fn, had = getattr(owner, attr), attr in vars(owner)

        def timed(*a: Any, **k: Any) -> Any:
            self._start(name)
            try:
                return fn(*a, **k)
            finally:
                self._stop(name)

        if isinstance(fn, torch.nn.Module):  # a submodule cannot be replaced by a function: hook its forward
            self._undo.append(fn.register_forward_pre_hook(lambda m, a: self._start(name)).remove)
            self._undo.append(fn.register_forward_hook(lambda m, a, o: self._stop(name)).remove)
            return
        object.__setattr__(owner, attr, timed)
        self._undo.append(
            lambda: object.__setattr__(owner, attr, fn) if had else object.__delattr__(owner, attr)
        )

    def step(self, fn) -> None:
        self.cur = {}
        total = time_call(fn, self.device)
        self.cur["other"] = max(total - sum(self.cur.values()), 0.0)
        self.steps.append({**self.cur, "total": total})

    def medians_ms(self) -> dict[str, float]:
        keys = [k for k in PHASES if any(k in s for s in self.steps)]
        return {k: round(statistics.median(s.get(k, 0.0) for s in self.steps) * 1000, 3) for k in keys}

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []


#: the phases of ``phases_ms``, in step order
PHASES = (
    "data_to_device",
    "forward",
    "teacher_forward",
    "task_loss",
    "kd_loss",
    "backward",
    "optimizer",
    "ema",
    "other",
    "total",
)


def phase_breakdown(trainer: Any, tasks: dict[str, Any], batches: list, steps: int) -> dict[str, Any]:
    """``{step name: {phase: median ms}}`` of ``tasks`` (``{name: (run_step task arg, task module)}``)."""
    out = {}
    for name, (arg, task) in tasks.items():
        ph = Phases(trainer.device)
        ph.wrap(trainer, "to_device", "data_to_device")
        ph.wrap(trainer, "backward", "backward")
        ph.wrap(trainer, "optimizer_step", "optimizer")
        if trainer.ema is not None:
            ph.wrap(trainer.ema, "update", "ema")
        ph.wrap(task, "student", "forward")
        ph.wrap(task, "task_loss", "task_loss")
        if getattr(task, "teacher", None) is not None:
            ph.wrap(task, "teacher", "teacher_forward")
            ph.wrap(task, "distill", "kd_loss")
        try:
            for i in range(steps):
                ph.step(lambda b=batches[i % len(batches)], a=arg: trainer.run_step(b, 0, 0, task=a))
        finally:
            ph.remove()
        out[name] = ph.medians_ms()
    return out
