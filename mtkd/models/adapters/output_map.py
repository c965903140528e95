"""Mapping a wrapped module's raw output onto ``seg`` / ``det`` / named seg tasks: output paths and probability →
logit conversion.

- ``parse_outputs(mapping, allowed=...)``: the ``outputs`` config, ``{name: path}`` or, for a seg output,
  ``{name: {index: path, activation: sigmoid}}`` (YOLOP: ``{det: 0, drivable: {index: 1, activation: sigmoid},
  lane: {index: 2, activation: sigmoid}}``), validated into ``{name: OutputRoute}``.
- ``select_output(out, path)``: follow an index, a key, or a list of them (``[0, "drive"]``) into a module's
  output (tensor, tuple/list, dict, nested).
- ``probs_to_logits(p, activation)``: a seg head's probabilities ``[B, C, h, w]`` back into logits, so
  distillation's KL sees logits (``SEG_ACTIVATIONS``: what the seg output is).

Error messages name the ``generic`` adapter's config fields (``outputs``, ``seg_activation``) by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import check_keys, describe
from mtkd.utils.suggest import did_you_mean

SEG_ACTIVATIONS = ("logits", "sigmoid", "softmax")
PROB_EPS = 1e-6
#: a step (index or key) or a list of steps into a module's output
OutputPath = int | str | Sequence[int | str]
#: the keys of a seg output given as a dict: ``{index: path, activation: sigmoid}``
OUTPUT_ENTRY_KEYS = ("index", "activation")


@dataclass(frozen=True)
class OutputRoute:
    """Where one mapped output is in the module's output (``path``) and, for a seg output, what it holds
    (``activation``: one of ``SEG_ACTIVATIONS``, ``None`` = the adapter's ``seg_activation``)."""

    path: OutputPath
    activation: str | None = None


def check_activation(value: Any, field: str, where: str = "generic adapter") -> str:
    """``value`` if it is one of ``SEG_ACTIVATIONS``; ``ConfigError`` naming ``field`` (did-you-mean) otherwise."""
    if value not in SEG_ACTIVATIONS:
        raise ConfigError(
            f"{where}: field {field!r} = {value!r}; expected one of {SEG_ACTIVATIONS}"
            f"{did_you_mean(str(value), SEG_ACTIVATIONS)}"
        )
    return value


def _check_path(path: Any, field: str, where: str) -> OutputPath:
    steps = [path] if isinstance(path, (int, str)) else path
    if not isinstance(steps, (list, tuple)) or not all(
        isinstance(s, (int, str)) and not isinstance(s, bool) for s in steps
    ):
        raise ConfigError(
            f"{where}: field {field!r} = {path!r}; expected an index, a key or a list of them into the module output"
        )
    return path


def parse_outputs(
    mapping: Any, *, field: str, allowed: Sequence[str], where: str = "generic adapter", hint: str = ""
) -> dict[str, OutputRoute]:
    """Validate an ``outputs``-style mapping ``{name: path | {index: path, activation: ...}}`` (``name`` in
    ``allowed``: ``det``, ``seg`` or the model's seg tasks) into ``{name: OutputRoute}``; ``ConfigError`` naming the
    field (did-you-mean for unknown names and entry keys). ``det`` takes a path only. ``hint`` ends the message
    about an unknown name."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: field {field!r} = {mapping!r}; expected a dict like {{det: 0, seg: 1}}")
    routes: dict[str, OutputRoute] = {}
    for name, value in mapping.items():
        if name not in allowed:
            raise ConfigError(
                f"{where}: field {field!r} has unknown output {name!r}{did_you_mean(str(name), allowed)}; "
                f"expected {', '.join(allowed)}{hint}"
            )
        key = f"{field}.{name}"
        if not isinstance(value, Mapping):
            routes[name] = OutputRoute(_check_path(value, key, where))
            continue
        if name == "det":
            raise ConfigError(
                f"{where}: field {key!r} = {value!r}; det takes a path (index, key or list of them)"
            )
        check_keys(value, OUTPUT_ENTRY_KEYS, f"{where}: field {key!r}")
        if "index" not in value:
            raise ConfigError(
                f"{where}: field '{key}.index' is required (where the output is, e.g. index: 1)"
            )
        act = value.get("activation")
        act = None if act is None else check_activation(act, f"{key}.activation", where)
        routes[name] = OutputRoute(_check_path(value["index"], f"{key}.index", where), act)
    return routes


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
