"""Exponential moving average of the student's weights (Ultralytics/timm ``ModelEMA`` semantics).

``decay(updates) = decay * (1 - exp(-updates / tau))`` ramps the decay up from 0, so early EMA weights follow
the model closely. Floating-point parameters *and* buffers (BatchNorm running stats) are averaged; integer
buffers (``num_batches_tracked``) are copied. ``state_dict()`` / ``load_state_dict()`` make it resumable.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or ``model`` itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class ModelEMA:
    """EMA copy of ``model`` (kept in eval mode, no grads).

    Args:
        model: the live model (DDP-wrapped or not).
        decay: asymptotic decay.
        tau: ramp length in updates.
        updates: number of updates already done (for resume).
    """

    def __init__(
        self, model: nn.Module, *, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0
    ) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.ema.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = int(updates)

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = d * ema + (1 - d) * model`` for every floating-point tensor of the state dict."""
        self.updates += 1
        d = self.current_decay()
        msd = unwrap(model).state_dict()
        for k, v in self.ema.state_dict().items():
            src = msd[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src.to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
