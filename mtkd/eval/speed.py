"""Speed and size: latency, throughput, parameter count, FLOPs, checkpoint size.

- Latency: wall time of one forward pass (``model.eval()``, ``torch.inference_mode()``, random input in
  [0, 1]) after ``warmup`` passes; CUDA is synchronized around each pass. One pass of timings is not a
  measurement on a shared machine (a busy neighbour doubles it), so latency is timed in **rounds** of
  ``passes`` forward passes until it is stable: after every round the medians of the last ``min_rounds``
  rounds are compared, and timing stops when their run-to-run spread ``(max - min) / median`` is at most
  ``rel_tol`` (``latency_stop: "stable"``), or after ``max_rounds`` rounds or ``budget_s`` seconds
  (``"max_rounds"`` / ``"budget"``, ``latency_stable: false``). p50/p90/mean/IQR are computed over the passes
  of one window of ``min_rounds`` consecutive rounds: the last one when stable (earlier rounds were the
  settling-in), else the one whose medians agree best (``steadiest_window``: load only ever adds time, so the
  steadiest stretch is the best estimate there is, and its spread says how good that is); every round's median
  is kept in ``latency_round_ms`` and the window in ``latency_window`` so anyone can re-check. Several models (one report) are timed **interleaved**
  (``measure_latency_interleaved``): each round times every model once, in a rotating order, after one
  untimed pass, so a change of load hits all of them alike instead of whichever model ran at that moment.
  Results carry the device, batch, image size and ``torch.get_num_threads()`` (CPU results depend on it).
- Throughput: images per second at a larger batch, after warm-up (one series of passes).
- FLOPs: counted by ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass at batch 1. These are
  **FLOPs, not MACs**: a multiply-add counts as 2 (the convention Ultralytics' "GFLOPs" also follows).
  Only the ops torch has formulas for (convolutions, matmuls, attention) are counted; element-wise ops
  (activations, BN in eval, additions) are not.
- Size: bytes on disk / 2**20 (MiB, reported as ``size_mb``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

# Default stopping rule of a latency measurement (see the module docstring).
MIN_ROUNDS = 3
MAX_ROUNDS = 20
REL_TOL = 0.05
BUDGET_S = 30.0  # per model


def _hw(imgsz: int | tuple[int, int]) -> tuple[int, int]:
    return (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _sync_for(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _timed_runs(model: nn.Module, x: torch.Tensor, warmup: int, iters: int) -> np.ndarray:
    """Seconds per forward pass, ``iters`` values, after ``warmup`` untimed passes."""
    sync = _sync_for(x.device)
    times = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        sync()
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return np.asarray(times)


# ---------------------------------------------------------------- rounds until stable (pure, testable)


def relative_spread(values: Sequence[float]) -> float | None:
    """Run-to-run spread ``(max - min) / median`` of ``values`` (e.g. per-round medians); ``None`` for < 2."""
    if len(values) < 2:
        return None
    med = float(np.median(values))
    return float((max(values) - min(values)) / med) if med > 0 else math.inf


def is_stable(round_medians: Sequence[float], min_rounds: int, rel_tol: float) -> bool:
    """At least ``min_rounds`` rounds and the last ``min_rounds`` medians agree within ``rel_tol``."""
    if len(round_medians) < max(min_rounds, 2):
        return False
    spread = relative_spread(round_medians[-min_rounds:])
    return spread is not None and spread <= rel_tol


def run_rounds(
    blocks: Mapping[str, Callable[[], Sequence[float]]],
    *,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    rel_tol: float = REL_TOL,
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[list[float]]], str]:
    """Call every block once per round, round-robin, until all are stable or a limit is reached.

    Args:
        blocks: ``{name: block}``; a block times one round of passes and returns their times (ms).
        clock: seconds, for the budget (injectable for tests).

    Returns:
        ``({name: [[ms of round 1], [ms of round 2], ...]}, stop)`` with ``stop`` one of ``"stable"``,
        ``"max_rounds"``, ``"budget"``. At least one round always runs; the order rotates every round
        (no model is always first after another one).
    """
    if min_rounds < 2 or max_rounds < 1 or rel_tol < 0 or budget_s < 0 or not blocks:
        raise ValueError("need blocks, min_rounds >= 2, max_rounds >= 1, rel_tol >= 0, budget_s >= 0")
    names = list(blocks)
    rounds: dict[str, list[list[float]]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    t0 = clock()
    r = 0
    while True:
        k = r % len(names)
        for n in names[k:] + names[:k]:
            ms = [float(t) for t in blocks[n]()]
            if not ms:
                raise ValueError(f"latency block {n!r} returned no timings")
            rounds[n].append(ms)
            medians[n].append(float(np.median(ms)))
        r += 1
        if all(is_stable(medians[n], min_rounds, rel_tol) for n in names):
            return rounds, "stable"
        if r >= max_rounds:
            return rounds, "max_rounds"
        if clock() - t0 >= budget_s:
            return rounds, "budget"


def steadiest_window(rounds: Mapping[str, Sequence[Sequence[float]]], min_rounds: int = MIN_ROUNDS) -> int:
    """Start of the ``min_rounds`` consecutive rounds whose medians agree best, for all models at once.

    The worst model's run-to-run spread is minimized (models timed together keep one common window, the same
    stretch of time); ties go to the latest window. After a ``"stable"`` stop this is the last window.
    """
    n = min(len(r) for r in rounds.values())
    if n <= min_rounds:
        return 0
    medians = [[float(np.median(r)) for r in rs[:n]] for rs in rounds.values()]
    best, best_spread = n - min_rounds, math.inf
    for start in range(n - min_rounds, -1, -1):  # latest first: a tie keeps the later window
        worst = max(relative_spread(m[start : start + min_rounds]) or 0.0 for m in medians)
        if worst < best_spread:
            best, best_spread = start, worst
    return best


def summarize_rounds(
    rounds: Sequence[Sequence[float]], *, min_rounds: int = MIN_ROUNDS, start: int | None = None
) -> dict[str, Any]:
    """Latency statistics of one model's rounds (ms per pass, one list per round).

    p50/p90/mean/IQR are over the passes of the window of ``min_rounds`` rounds from ``start`` (default: the
    last ones; ``steadiest_window`` picks it after a measurement that did not become stable);
    ``latency_round_spread`` is the run-to-run spread of that window's round medians (``None`` with a single
    round); ``latency_round_ms`` holds the median of every round and ``latency_window`` the window's first and
    last round (1-based).
    """
    if not rounds or not all(len(r) for r in rounds):
        raise ValueError("need at least one round with timings")
    k = max(min_rounds, 1)
    first = max(len(rounds) - k, 0) if start is None else min(max(start, 0), max(len(rounds) - k, 0))
    window = list(rounds[first : first + k])
    ms = np.concatenate([np.asarray(r, dtype=np.float64) for r in window])
    p25, p50, p75, p90 = np.percentile(ms, [25, 50, 75, 90])
    medians = [float(np.median(r)) for r in rounds]
    spread = relative_spread(medians[first : first + len(window)])
    return {
        "latency_ms_p50": float(p50),
        "latency_ms_p90": float(p90),
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_iqr": float(p75 - p25),
        "latency_samples": int(ms.size),
        "latency_rounds": len(rounds),
        "latency_round_ms": [round(m, 4) for m in medians],
        "latency_window": [first + 1, first + len(window)],
        "latency_round_spread": None if spread is None else round(spread, 6),
    }


# ---------------------------------------------------------------- measuring models


def _block(model: nn.Module, x: torch.Tensor, passes: int, untimed: int) -> Callable[[], list[float]]:
    """A round of ``passes`` timed forward passes (ms) after ``untimed`` passes (cache refill after a switch)."""

    def run() -> list[float]:
        return (_timed_runs(model, x, untimed, passes) * 1e3).tolist()

    return run


def measure_latency_interleaved(
    models: Mapping[str, nn.Module],
    imgsz: int | tuple[int, int] | Mapping[str, int | tuple[int, int]],
    *,
    device: str | torch.device | None = None,
    batch: int = 1,
    warmup: int = 5,
    iters: int = 30,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    rel_tol: float = REL_TOL,
    budget_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency of several models timed round-robin, until every one is stable (module docstring).

    Args:
        models: ``{name: model}``; each is moved to ``device`` (default: where the first one's parameters are).
        imgsz: ``S``, ``(H, W)``, or one of those per name.
        iters: timed passes of a stable measurement: each round has ``ceil(iters / min_rounds)`` passes.
        budget_s: total time limit (default ``BUDGET_S`` per model).

    Returns:
        ``{name: speed dict}`` with ``measure_latency``'s keys; ``latency_method`` is ``"interleaved"`` and
        ``latency_interleaved_with`` names the other models when there are several.
    """
    if iters < 1 or warmup < 0 or batch < 1 or min_rounds < 2 or not models:
        raise ValueError("need models, iters >= 1, warmup >= 0, batch >= 1, min_rounds >= 2")
    first = next(iter(models.values()))
    dev = torch.device(device) if device is not None else _model_device(first)
    passes = math.ceil(iters / min_rounds)
    several = len(models) > 1
    blocks, sizes = {}, {}
    for name, model in models.items():
        size = imgsz[name] if isinstance(imgsz, Mapping) else imgsz
        h, w = _hw(size)
        sizes[name] = size if isinstance(size, int) else [h, w]
        model.to(dev)
        x = torch.rand(batch, 3, h, w, device=dev)
        _timed_runs(model, x, warmup, 0)  # warm-up
        blocks[name] = _block(model, x, passes, 1 if several else 0)
    rounds, stop = run_rounds(
        blocks,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        rel_tol=rel_tol,
        budget_s=BUDGET_S * len(models) if budget_s is None else budget_s,
    )
    start = steadiest_window(rounds, min_rounds)
    out = {}
    for name in models:
        out[name] = {
            "device": str(dev),
            "batch": batch,
            "imgsz": sizes[name],
            "threads": torch.get_num_threads(),
            **summarize_rounds(rounds[name], min_rounds=min_rounds, start=start),
            "latency_passes_per_round": passes,
            "latency_stable": stop == "stable",
            "latency_stop": stop,
            "latency_rel_tol": rel_tol,
            "latency_method": "interleaved" if several else "repeated",
        }
        if several:
            out[name]["latency_interleaved_with"] = [n for n in models if n != name]
    return out


def measure_latency(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    *,
    device: str | torch.device | None = None,
    batch: int = 1,
    warmup: int = 5,
    iters: int = 30,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    rel_tol: float = REL_TOL,
    budget_s: float = BUDGET_S,
) -> dict[str, Any]:
    """Latency of ``model`` on a ``[batch, 3, H, W]`` input, repeated in rounds until stable.

    Args:
        imgsz: ``S`` (square) or ``(H, W)``.
        device: where to run; default: where the model's parameters are. The model is moved there.
        iters: timed passes of a stable measurement (``min_rounds`` rounds of ``ceil(iters / min_rounds)``).
        min_rounds, max_rounds, rel_tol, budget_s: the stopping rule (module docstring).

    Returns:
        ``{"device", "batch", "imgsz", "threads", "latency_ms_p50", "latency_ms_p90", "latency_ms_mean",
        "latency_ms_iqr", "latency_samples", "latency_rounds", "latency_round_ms", "latency_window",
        "latency_round_spread", "latency_passes_per_round", "latency_stable", "latency_stop", "latency_rel_tol",
        "latency_method"}``.
    """
    return measure_latency_interleaved(
        {"model": model},
        imgsz,
        device=device,
        batch=batch,
        warmup=warmup,
        iters=iters,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        rel_tol=rel_tol,
        budget_s=budget_s,
    )["model"]


def measure_throughput(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    *,
    device: str | torch.device | None = None,
    batch: int = 8,
    warmup: int = 2,
    iters: int = 10,
) -> dict[str, Any]:
    """Images per second at batch ``batch``: ``batch * iters / total time`` after ``warmup`` passes.

    Returns ``{"throughput_ips", "throughput_batch"}``.
    """
    if iters < 1 or warmup < 0 or batch < 1:
        raise ValueError("need iters >= 1, warmup >= 0, batch >= 1")
    dev = torch.device(device) if device is not None else _model_device(model)
    model.to(dev)
    h, w = _hw(imgsz)
    x = torch.rand(batch, 3, h, w, device=dev)
    secs = _timed_runs(model, x, warmup, iters)
    return {"throughput_ips": float(batch * iters / secs.sum()), "throughput_batch": batch}


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, imgsz: int | tuple[int, int], *, batch: int = 1) -> int:
    """FLOPs (multiply-add = 2) of one forward pass on ``[batch, 3, H, W]``, via ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = _hw(imgsz)
    x = torch.rand(batch, 3, h, w, device=_model_device(model))
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def file_size_mb(path: str | os.PathLike) -> float:
    """Size of the file at ``path`` in MiB (bytes / 2**20)."""
    return os.path.getsize(path) / 2**20
