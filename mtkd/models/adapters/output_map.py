"""Mapping a wrapped module's raw output onto ``seg`` / ``det``: output paths and probability → logit conversion.

- ``select_output(out, path)``: follow an index, a key, or a list of them (``[0, "drive"]``) into a module's
  output (tensor, tuple/list, dict, nested).
- ``probs_to_logits(p, activation)``: a seg head's probabilities ``[B, C, h, w]`` back into logits, so
  distillation's KL sees logits (``SEG_ACTIVATIONS``: what the seg output is).

Error messages name the ``generic`` adapter's config fields (``outputs``, ``seg_activation``) by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import describe

SEG_ACTIVATIONS = ("logits", "sigmoid", "softmax")
PROB_EPS = 1e-6
#: a step (index or key) or a list of steps into a module's output
OutputPath = int | str | Sequence[int | str]


def probs_to_logits(
    p: Tensor, activation: str, eps: float = PROB_EPS, *, where: str = "generic adapter"
) -> Tensor:
    """Turn a seg head's probabilities ``[B, C, h, w]`` back into logits.

    - ``"logits"``: returned unchanged.
    - ``"softmax"``: ``log(clamp(p, eps))``; ``softmax`` of the result gives back ``p`` (rows sum to 1).
    - ``"sigmoid"`` with ``C == 1`` (binary foreground map): two-class logits ``[log(1 - p), log(p)]``
      (clamped to ``[eps, 1 - eps]``), ``[B, 2, h, w]``; ``softmax`` of the result gives back ``[1 - p, p]``.
    - ``"sigmoid"`` with ``C > 1`` (independent per-channel sigmoids, e.g. YOLOP's 2-channel drivable-area and
      lane heads): ``logit(clamp(p, eps, 1 - eps))``; ``sigmoid`` of the result gives back ``p`` and the argmax
      over channels is unchanged.
    """
    if activation == "logits":
        return p
    if activation == "softmax":
        return p.float().clamp_min(eps).log()
    if activation == "sigmoid":
        q = p.float().clamp(eps, 1.0 - eps)
        if q.shape[1] == 1:
            return torch.cat([torch.log1p(-q), q.log()], dim=1)
        return torch.logit(q)
    raise ConfigError(f"{where}: field 'seg_activation' = {activation!r}; expected one of {SEG_ACTIVATIONS}")


def select_output(out: Any, path: OutputPath, *, field: str, where: str = "generic adapter") -> Any:
    """Follow ``path`` (an index, a key, or a list of them; ``[]`` = the output itself) into a module's output;
    ``ConfigError`` naming ``field`` and the step that is missing otherwise."""
    steps = [path] if isinstance(path, (int, str)) else list(path)
    node = out
    for depth, step in enumerate(steps):
        try:
            node = node[step]
        except (IndexError, KeyError, TypeError):
            have = f" with keys {list(node)}" if isinstance(node, Mapping) else ""
            raise ConfigError(
                f"{where}: field '{field}' = {path!r}: step {depth} ({step!r}) not found in the module output "
                f"({describe(node)}{have})"
            ) from None
    return node
