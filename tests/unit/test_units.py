"""Rate and duration parsing, with property-based tests on the rate parser."""

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskguard.units import Rate, parse_duration, parse_rate


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [
        ("10/s", 10, 1),
        ("100/m", 100, 60),
        ("5000/h", 5000, 3600),
        ("1000/d", 1000, 86400),
        ("30/5m", 30, 300),
        (" 7 / second ", 7, 1),
        ("2/10S", 2, 10),
    ],
)
def test_parse_rate(text: str, limit: int, period: float) -> None:
    assert parse_rate(text) == Rate(limit, period)


@pytest.mark.parametrize(
    "text", ["10/x", "10", "/s", "-1/s", "0/s", "1.5/s", "10/0s", "ten/s", "10/s/s", ""]
)
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


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
    rate = parse_rate(text)
    assert rate.limit == count
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit[0]]
    assert rate.period == multiplier * seconds
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
