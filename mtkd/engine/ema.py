"""Exponential moving average of the student's weights (Ultralytics/timm ``ModelEMA`` semantics).

``decay(updates) = decay * (1 - exp(-updates / tau))`` ramps the decay up from 0, so early EMA weights follow
the model closely. Floating-point parameters *and* buffers (BatchNorm running stats) are averaged; integer
buffers (``num_batches_tracked``) are copied. ``state_dict()`` / ``load_state_dict()`` make it resumable.

The update runs in place over cached lists of paired tensors (the entries of both models' ``state_dict``, paired
by name once per source model): ``ema *= d`` then ``ema += (1 - d) * model`` as two ``torch._foreach_*`` calls,
the same two roundings as the per-tensor ``mul_``/``add_`` formula (bitwise the same on CPU, where the foreach
ops run per tensor), with no ``state_dict()`` and no ``Tensor.to`` per step. A tensor that appears under two
names (tied weights) is averaged once.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or ``model`` itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class _Pairs:
    """The EMA's tensors paired with a source model's, by ``state_dict`` name (built once per source model)."""

    def __init__(self, ema: nn.Module, model: nn.Module) -> None:
        self.model = model
        src = model.state_dict(keep_vars=True)
        seen: set[int] = set()
        self.float_ema: list[Tensor] = []
        self.float_src: list[Tensor] = []
        # float pairs of different dtype or device (never between a model and its own EMA copy)
        self.cast: list[tuple[Tensor, Tensor]] = []
        self.other_ema: list[Tensor] = []
        self.other_src: list[Tensor] = []
        for k, v in ema.state_dict(keep_vars=True).items():
            s = src[k]  # keep_vars: the Parameter objects themselves (robust to ``param.data = ...``)
            if id(v) in seen:
                continue
            seen.add(id(v))
            if not v.dtype.is_floating_point:
                self.other_ema.append(v)
                self.other_src.append(s)
            elif s.dtype == v.dtype and s.device == v.device:
                self.float_ema.append(v)
                self.float_src.append(s)
            else:
                self.cast.append((v, s))


class ModelEMA:
    """EMA copy of ``model`` (kept in eval mode, no grads).

    Args:
        model: the live model (DDP-wrapped or not).
        decay: asymptotic decay.
        tau: ramp length in updates.
        updates: number of updates already done (for resume).

    The pairing of the EMA's tensors with the model's is cached per model object (``update(model)`` with another
    model rebuilds it); call ``reset_pairs()`` after replacing tensors of either model (e.g. moving it to another
    device or dtype) — in-place changes (``load_state_dict``, DDP buffer broadcasts) need nothing.
    """

    def __init__(
        self, model: nn.Module, *, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0
    ) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval()
        # a copy of an nn.Module.compile()'d model would call the original's compiled forward: run it eagerly
        if getattr(self.ema, "_compiled_call_impl", None) is not None:
            self.ema._compiled_call_impl = None
        self.ema.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = int(updates)
        self._pairs: _Pairs | None = None

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    def reset_pairs(self) -> None:
        """Forget the cached tensor pairing (rebuilt at the next ``update``)."""
        self._pairs = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = d * ema + (1 - d) * model`` for every floating-point tensor of the state dict; the others are
        copied."""
        self.updates += 1
        d = self.current_decay()
        m = unwrap(model)
        p = self._pairs
        if p is None or p.model is not m:
            p = self._pairs = _Pairs(self.ema, m)
        if p.float_ema:
            torch._foreach_mul_(p.float_ema, d)
            torch._foreach_add_(p.float_ema, p.float_src, alpha=1.0 - d)
        for v, s in p.cast:
            v.mul_(d).add_(s.to(v.dtype), alpha=1.0 - d)
        if p.other_ema:
            torch._foreach_copy_(p.other_ema, p.other_src)

    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
        self._pairs = None
