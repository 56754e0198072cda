"""Rate and duration parsing, with property-based tests on the rate parser."""

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskguard.units import MAX_INTERVAL, MIN_INTERVAL, Rate, parse_duration, parse_rate


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [
        ("10/s", 10, 1),
        ("100/m", 100, 60),
        ("5000/h", 5000, 3600),
        ("1000/d", 1000, 86400),
        ("30/5m", 30, 300),
        ("7 / second", 7, 1),
        ("30/ 5 m", 30, 300),
        ("1000000/s", 1_000_000, 1),
        ("1/365d", 1, 365 * 86400),
        ("2/10S", 2, 10),
    ],
)
def test_parse_rate(text: str, limit: int, period: float) -> None:
    assert parse_rate(text) == Rate(limit, period)


@pytest.mark.parametrize(
    "text",
    [
        *("10/x", "10", "/s", "-1/s", "0/s", "1.5/s", "10/0s", "ten/s", "10/s/s", ""),
        # issue 11: ASCII digits only, nothing around the rate
        *("10/s\n", " 10/s", "10/s ", "\t10/s"),
        *("\u0661\u0660/s", "10/\u0665m", "\uff110/s", "10/\u017f"),
    ],
)
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1/99999999999d", "too slow: at least one call per 365 days"),
        ("1/366d", "too slow"),
        ("1000001/s", "too fast: at most 1000000 calls per second"),
        (f"{2**53 + 1}/d", "at most 2**53"),
    ],
)
def test_rates_are_bounded(text: str, message: str) -> None:
    """The emission interval stays from 1 µs to a year, exact in the Lua scripts."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rate(text)
    with pytest.raises(ValueError, match="too"):
        Rate(1, 10**10)
    assert Rate(2**53, 2**53).interval == 1.0


def test_parse_rate_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="string"):
        parse_rate(10)  # type: ignore[arg-type]


def test_rate_properties() -> None:
    rate = parse_rate("30/5m")
    assert rate.interval == 10.0
    assert rate.per_second == pytest.approx(0.1)
    assert parse_rate(rate) is rate
    with pytest.raises(ValueError, match="positive"):
        Rate(0, 1)
    with pytest.raises(ValueError, match="positive"):
        Rate(1, 0)
    with pytest.raises(ValueError, match="finite"):
        Rate(1, float("inf"))


units = st.sampled_from(["s", "m", "h", "d", "sec", "minute", "hours", "day"])


@given(count=st.integers(1, 10**9), multiplier=st.integers(1, 1000), unit=units)
def test_parse_rate_property(count: int, multiplier: int, unit: str) -> None:
    text = f"{count}/{'' if multiplier == 1 else multiplier}{unit}"
    period = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit[0]] * multiplier
    if period * 1_000_000 < count or period > count * MAX_INTERVAL:  # 1 µs to a year
        with pytest.raises(ValueError, match=r"too (fast|slow)"):
            parse_rate(text)
        return
    rate = parse_rate(text)
    assert rate.limit == count
    assert MIN_INTERVAL <= rate.interval <= MAX_INTERVAL
    assert rate.period == period
    assert parse_rate(str(rate)) == rate  # str() is a canonical, parseable form


@given(st.text(max_size=12))
def test_parse_rate_never_crashes_otherwise(text: str) -> None:
    try:
        rate = parse_rate(text)
    except ValueError:
        return
    assert rate.limit > 0
    assert rate.period > 0


def test_parse_duration() -> None:
    assert parse_duration(3) == 3.0
    assert parse_duration(timedelta(minutes=2)) == 120.0
    assert parse_duration(0, allow_zero=True) == 0.0
    for bad in (0, -1, float("nan"), float("inf"), "3", True):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)  # type: ignore[arg-type]
