"""Checks of the ``distill.feat_kd`` tap names (``mtkd.config.FeatKDConfig``), kept out of ``mtkd.config``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mtkd.errors import ConfigError
from mtkd.utils.suggest import did_you_mean


def check_feat_kd_names(names: Sequence[str], teacher_names: Mapping) -> None:
    """``ConfigError`` (one line, naming the field) unless ``names`` are unique (dots count as ``_``: the
    connectors' module keys) and ``teacher_names`` maps some of ``names`` (student taps) to non-empty teacher tap
    names (e.g. ``{p3: det.p3}`` for a composite teacher)."""
    if len({n.replace(".", "_") for n in names}) != len(names):
        raise ConfigError(
            f"distill.feat_kd.names: duplicate feature names (dots count as '_'): {list(names)}"
        )
    for student, teacher in teacher_names.items():
        if student not in names:
            hint = did_you_mean(str(student), [str(n) for n in names]) or f"; names: {list(names)}"
            raise ConfigError(
                f"distill.feat_kd.teacher_names: {student!r} is not one of distill.feat_kd.names{hint}"
            )
        if not isinstance(teacher, str) or not teacher:
            raise ConfigError(
                f"distill.feat_kd.teacher_names.{student}: expected a teacher feature tap name, got {teacher!r}"
            )
