"""Strict typed configs from frozen dataclasses: coercion, range/choice checks and did-you-mean errors.

``build_dataclass(cls, raw)`` validates a nested mapping into ``cls``; each field's ``metadata`` comes from
``field_meta(help, range_=(low, high, low_inclusive, high_inclusive), choices=(...), check=fn)``. Types understood:
``bool`` (also the YAML 1.1 words yes/no/on/off), ``int``, ``float`` (finite), ``str``, ``dict``, ``tuple[T, ...]``
(a list, or a comma-separated string), unions with ``None``, nested dataclasses, and ``Schedulable`` (a number or a
schedule mapping ``{kind, start, end}``, ``mtkd.utils.schedules``). The schema itself lives in ``mtkd.config``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from mtkd.errors import ConfigError
from mtkd.utils.schedules import Schedule
from mtkd.utils.suggest import did_you_mean

Schedulable = float | dict  # a number or a schedule mapping {kind, start, end} (mtkd.utils.schedules)


def field_meta(help_: str, *, range_: tuple | None = None, choices: tuple | None = None, check=None) -> dict:
    """Field metadata: ``range_ = (low, high, low_inclusive, high_inclusive)``; ``check(value) -> error or None``."""
    return {"help": help_, "range": range_, "choices": choices, "check": check}


def plain(x: Any) -> Any:
    """Mappings and sequences turned into plain dicts and lists (YAML- and weights_only-safe)."""
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def _did_you_mean(key: str, choices: Sequence[str], prefix: str = "") -> str:
    return did_you_mean(key, choices, prefix=prefix)


def _fmt_range(r: tuple) -> str:
    lo, hi, lo_in, hi_in = r
    return f"{'[' if lo_in else '('}{lo}, {hi if math.isfinite(hi) else 'inf'}{']' if hi_in else ')'}"


def _in_range(v: float, r: tuple) -> bool:
    lo, hi, lo_in, hi_in = r
    return (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)


def _type_name(tp: Any) -> str:
    if tp is Schedulable:
        return "number or schedule {kind, start, end}"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(args[0])}"
    return {type(None): "null", dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ``ConfigError`` naming ``key``."""
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is Schedulable:
        if isinstance(value, Mapping):
            return dict(Schedule.parse(value, key=key).__dict__)
        tp = float
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (
            isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args
        ):
            if type(None) in args:
                return None
            raise bad
        for a in args:  # order matters: bool before str for `resume`
            if a is type(None):
                continue
            try:
                return coerce(key, value, a)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(coerce(f"{key}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:  # YAML 1.1 words, read as strings
            return _BOOL_WORDS[value.lower()]
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if isinstance(value, float) and not value.is_integer():
            raise bad
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad
        return str(value)
    if tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    raise bad  # pragma: no cover


def check_value(key: str, value: Any, meta: Mapping) -> None:
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(
            f"{key}: {value!r} is not one of {list(meta['choices'])}"
            f"{_did_you_mean(str(value), meta['choices'])}"
        )
    r = meta.get("range")
    if r is not None:
        if isinstance(value, dict):  # a schedule: check both ends
            sched = Schedule.parse(value, key=key)
            if not (_in_range(sched.start, r) and _in_range(sched.end, r)):
                raise ConfigError(
                    f"{key}: schedule {sched.start} -> {sched.end} is outside the allowed range "
                    f"{_fmt_range(r)}"
                )
        elif isinstance(value, (int, float)) and not _in_range(value, r):
            raise ConfigError(f"{key}: {value!r} is outside the allowed range {_fmt_range(r)}")
    check = meta.get("check")
    if check is not None and (msg := check(value)):
        raise ConfigError(f"{key}: {value!r} {msg}")


def build_dataclass(cls: type, raw: Mapping, prefix: str = "") -> Any:
    """Validate ``raw`` into the frozen dataclass ``cls`` (nested dataclass fields recursively); ``ConfigError`` names
    the dotted key for an unknown key (with did-you-mean), a wrong type or a value outside ``field_meta`` limits."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__} {raw!r}"
        )
    hints = typing.get_type_hints(cls)  # resolved in the dataclass's own module (which imports Schedulable)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{k}'{_did_you_mean(str(k), list(fields), prefix)}; "
                f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key, tp = prefix + name, hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, raw[name] if raw[name] is not None else {}, key + ".")
            continue
        try:
            value = coerce(key, raw[name], tp)
        except ConfigError as e:
            allowed = f.metadata.get("range") or f.metadata.get("choices")
            if allowed is None:
                raise
            shown = _fmt_range(allowed) if f.metadata.get("range") else list(allowed)
            raise ConfigError(f"{e} (allowed: {shown})") from None
        check_value(key, value, f.metadata)
        kwargs[name] = value
    return cls(**kwargs)


def typed_options(key: str, kind: str, options: Mapping, table: Mapping[str, Mapping]) -> dict:
    """``options`` of ``kind`` checked against ``table[kind]`` and coerced to their types; ``ConfigError`` naming
    ``key`` for an option the kind does not have or a bad value."""
    allowed, out = table.get(kind, {}), {}
    for k, v in options.items():
        if k not in allowed:
            valid = ", ".join(allowed) or "none"
            raise ConfigError(
                f"{key}: {k!r} is not an option of kind {kind!r}{_did_you_mean(str(k), list(allowed))}; "
                f"its options: {valid}"
            )
        out[k] = coerce(f"{key}.{k}", v, allowed[k][0])
        check_value(f"{key}.{k}", out[k], allowed[k][1])
    return out
