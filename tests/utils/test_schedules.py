"""Schedules: values at progress 0 / 0.5 / 1, parsing, and errors."""

from __future__ import annotations

import math

import pytest

from mtkd.errors import ConfigError
from mtkd.utils.schedules import Schedule


@pytest.mark.parametrize(
    ("kind", "start", "end", "expected"),
    [
        ("constant", 4.0, None, (4.0, 4.0, 4.0)),
        ("linear", 0.0, 1.0, (0.0, 0.5, 1.0)),
        ("linear", 8.0, 2.0, (8.0, 5.0, 2.0)),
        ("cosine", 0.0, 1.0, (0.0, 0.5, 1.0)),
        ("cosine", 1.0, 0.2, (1.0, 0.6, 0.2)),
    ],
)
def test_values_at_0_half_1(kind, start, end, expected):
    s = Schedule(kind, start, end)
    assert [s(p) for p in (0.0, 0.5, 1.0)] == pytest.approx(list(expected))


def test_cosine_differs_from_linear_off_midpoint():
    # cosine at p = 0.25: (1 - cos(pi/4)) / 2 = (1 - sqrt(2)/2) / 2
    assert Schedule("cosine", 0.0, 1.0)(0.25) == pytest.approx((1 - math.sqrt(2) / 2) / 2)
    assert Schedule("linear", 0.0, 1.0)(0.25) == pytest.approx(0.25)


def test_progress_is_clamped():
    s = Schedule("linear", 1.0, 3.0)
    assert s(-1.0) == 1.0 and s(2.0) == 3.0


def test_parse_number_and_mapping():
    assert Schedule.parse(0.7) == Schedule("constant", 0.7)
    assert Schedule.parse(3) == Schedule("constant", 3.0)
    assert Schedule.parse({"kind": "cosine", "start": 1, "end": 0})(0.5) == pytest.approx(0.5)
    assert Schedule.parse({"start": 2.0}) == Schedule("constant", 2.0)
    s = Schedule("linear", 0.0, 1.0)
    assert Schedule.parse(s) is s


def test_bad_kind_suggests():
    with pytest.raises(ConfigError, match=r"distill\.alpha_seg.*did you mean 'cosine'"):
        Schedule.parse({"kind": "cosin", "start": 0, "end": 1}, key="distill.alpha_seg")


@pytest.mark.parametrize(
    "value",
    [
        "0.5",
        True,
        None,
        float("nan"),
        {"kind": "linear"},
        {"start": 0, "ned": 1},
        {"kind": "constant", "start": 0, "end": 1},
    ],
)
def test_bad_values_raise(value):
    with pytest.raises(ConfigError, match="temperature"):
        Schedule.parse(value, key="temperature")


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'end'"):
        Schedule.parse({"start": 0, "ned": 1})


def test_check_range():
    Schedule("linear", 0.0, 1.0).check_range("a", low=0.0, high=1.0)
    with pytest.raises(ConfigError, match=r"a: 0.0 -> 1.5 is outside the allowed range \[0.0, 1.0\]"):
        Schedule("linear", 0.0, 1.5).check_range("a", low=0.0, high=1.0)
    with pytest.raises(ConfigError, match=r"\(0.0, inf\)"):
        Schedule("constant", 0.0).check_range("t", low=0.0, low_inclusive=False)
