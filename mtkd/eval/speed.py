"""Speed and size: latency, throughput, parameter count, FLOPs, checkpoint size.

- Latency: wall time of one forward pass (``model.eval()``, ``torch.inference_mode()``, random input in
  [0, 1]) after ``warmup`` passes; CUDA is synchronized around each pass. Reported as p50/p90 in ms,
  together with the device, batch, image size and ``torch.get_num_threads()`` (CPU results depend on it).
- Throughput: images per second at a larger batch, after warm-up.
- FLOPs: counted by ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass at batch 1. These are
  **FLOPs, not MACs**: a multiply-add counts as 2 (the convention Ultralytics' "GFLOPs" also follows).
  Only the ops torch has formulas for (convolutions, matmuls, attention) are counted; element-wise ops
  (activations, BN in eval, additions) are not.
- Size: bytes on disk / 2**20 (MiB, reported as ``size_mb``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn


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


def _timed_runs(model: nn.Module, x: torch.Tensor, warmup: int, iters: int) -> np.ndarray:
    """Seconds per forward pass, ``iters`` values, after ``warmup`` untimed passes."""
    sync: Callable[[], None] = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
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


def measure_latency(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    *,
    device: str | torch.device | None = None,
    batch: int = 1,
    warmup: int = 5,
    iters: int = 30,
) -> dict[str, Any]:
    """Latency of ``model`` on a ``[batch, 3, H, W]`` input.

    Args:
        imgsz: ``S`` (square) or ``(H, W)``.
        device: where to run; default: where the model's parameters are. The model is moved there.

    Returns:
        ``{"device", "batch", "imgsz", "threads", "latency_ms_p50", "latency_ms_p90", "latency_ms_mean"}``.
    """
    if iters < 1 or warmup < 0 or batch < 1:
        raise ValueError("need iters >= 1, warmup >= 0, batch >= 1")
    dev = torch.device(device) if device is not None else _model_device(model)
    model.to(dev)
    h, w = _hw(imgsz)
    x = torch.rand(batch, 3, h, w, device=dev)
    ms = _timed_runs(model, x, warmup, iters) * 1e3
    return {
        "device": str(dev),
        "batch": batch,
        "imgsz": imgsz if isinstance(imgsz, int) else [h, w],
        "threads": torch.get_num_threads(),
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_mean": float(ms.mean()),
    }


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
