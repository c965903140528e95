"""Schedules for the distillation temperature and the alphas, as a function of training progress.

``progress`` is the fraction of training done, in ``[0, 1]`` (the trainer passes e.g.
``(epoch + i / iters_per_epoch) / epochs``); values outside are clamped.

Kinds:
    - ``constant``: ``start`` (``end`` must equal ``start`` or be omitted);
    - ``linear``:   ``start + (end - start) * p``;
    - ``cosine``:   ``start + (end - start) * (1 - cos(pi * p)) / 2`` (flat at both ends).

A config value is either a number (constant) or a mapping ``{"kind": ..., "start": ..., "end": ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mtkd.errors import ConfigError
from mtkd.utils.suggest import did_you_mean as _did_you_mean

KINDS = ("constant", "linear", "cosine")
_DICT_KEYS = ("kind", "start", "end")


def did_you_mean(value: str, choices: tuple[str, ...] | list[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    return _did_you_mean(value, choices, cutoff=0.5)


@dataclass(frozen=True)
class Schedule:
    """A scalar that moves from ``start`` (progress 0) to ``end`` (progress 1).

    Args:
        kind: ``"constant"``, ``"linear"`` or ``"cosine"``.
        start: value at progress 0.
        end: value at progress 1; defaults to ``start``.
    """

    kind: str = "constant"
    start: float = 0.0
    end: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"schedule kind: {self.kind!r} is not one of {list(KINDS)}{did_you_mean(self.kind, KINDS)}"
            )
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"schedule {name}: expected a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.end is None:
            object.__setattr__(self, "end", self.start)
        if self.kind == "constant" and self.end != self.start:
            raise ConfigError(
                f"schedule: kind 'constant' takes one value, got start={self.start} end={self.end} "
                "(use kind 'linear' or 'cosine' to change it over training)"
            )

    def __call__(self, progress: float) -> float:
        """Value at ``progress`` (clamped to ``[0, 1]``)."""
        p = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        return self.start + (self.end - self.start) * (1.0 - math.cos(math.pi * p)) / 2.0

    @property
    def bounds(self) -> tuple[float, float]:
        """``(min, max)`` over the whole schedule (every kind is monotonic between its two end values)."""
        return min(self.start, self.end), max(self.start, self.end)

    @classmethod
    def parse(cls, value: Any, *, key: str = "schedule") -> Schedule:
        """Build from a number, a mapping ``{"kind", "start", "end"}`` or a ``Schedule`` (returned as is).

        ``key`` names the config field in error messages, e.g. ``"distill.alpha_seg"``.
        """
        if isinstance(value, Schedule):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return cls("constant", float(value))
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in _DICT_KEYS]
            if unknown:
                k = str(unknown[0])
                raise ConfigError(
                    f"{key}: unknown schedule key {k!r}, expected {list(_DICT_KEYS)}{did_you_mean(k, _DICT_KEYS)}"
                )
            if "start" not in value:
                raise ConfigError(f"{key}: schedule needs a 'start' value, got {dict(value)!r}")
            try:
                return cls(str(value.get("kind", "constant")), value["start"], value.get("end"))
            except ConfigError as e:
                raise ConfigError(f"{key}: {e}") from None
        raise ConfigError(
            f"{key}: expected a number or a mapping {{kind, start, end}}, got {type(value).__name__} {value!r}"
        )

    def check_range(
        self, key: str, *, low: float, high: float = math.inf, low_inclusive: bool = True
    ) -> None:
        """Raise ``ConfigError`` naming ``key`` unless every value of the schedule lies in the range."""
        lo, hi = self.bounds
        ok_low = lo >= low if low_inclusive else lo > low
        if not (ok_low and hi <= high):
            left = "[" if low_inclusive else "("
            right = f"{high}]" if math.isfinite(high) else "inf)"
            shown = f"{self.start}" if self.start == self.end else f"{self.start} -> {self.end}"
            raise ConfigError(f"{key}: {shown} is outside the allowed range {left}{low}, {right}")
