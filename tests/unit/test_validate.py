"""The one validation module: each validator's accepted forms, and errors naming the field
(and the task, when the caller gives it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from taskguard import _validate as check
from taskguard.errors import ConfigurationError
from taskguard.units import Rate


def test_seconds_takes_numbers_and_timedeltas() -> None:
    assert check.seconds(3, "ttl") == 3.0
    assert check.seconds(0.25, "ttl") == 0.25
    assert check.seconds(timedelta(minutes=2), "ttl") == 120.0
    assert check.seconds(0, "wait", allow_zero=True) == 0.0


@pytest.mark.parametrize(
    ("value", "allow_zero", "message"),
    [
        ("3", False, "must be seconds (a number) or a timedelta, got str"),
        (True, False, "must be seconds (a number) or a timedelta, got bool"),
        (None, False, "must be seconds (a number) or a timedelta, got NoneType"),
        (0, False, "must be positive seconds, got 0"),
        (-1, True, "must be zero or more seconds, got -1"),
        (float("inf"), False, "must be positive seconds, got inf"),
        (float("nan"), True, "must be zero or more seconds, got nan"),
        (timedelta(seconds=-1), False, "must be positive seconds, got datetime.timedelta"),
    ],
)
def test_seconds_refuses(value: Any, allow_zero: bool, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        check.seconds(value, "ttl", allow_zero=allow_zero)
    assert info.value.field == "ttl"
    assert info.value.task is None
    assert str(info.value).startswith(f"[field 'ttl'] {message}")


def test_count_names_its_minimum() -> None:
    assert check.count(1, "burst") == 1
    assert check.count(0, "max_deferrals", 0) == 0
    with pytest.raises(ConfigurationError, match=r"\[field 'burst'\] must be a positive integer"):
        check.count(0, "burst")
    with pytest.raises(ConfigurationError, match="must be an integer >= 0, got -1"):
        check.count(-1, "max_deferrals", 0)
    for bad in (True, 2.0, "2", None):
        with pytest.raises(ConfigurationError):
            check.count(bad, "window")


def test_count_is_at_most_2_to_the_53() -> None:
    """The largest integer Lua's doubles hold exactly (issue 11: a burst of 10**20)."""
    assert check.count(2**53, "burst") == 2**53
    for big in (2**53 + 1, 10**20):
        with pytest.raises(ConfigurationError, match=r"must be at most 2\*\*53") as info:
            check.count(big, "burst")
        assert info.value.field == "burst"


def test_name_is_bounded() -> None:
    assert check.name("x" * check.MAX_NAME_LENGTH, "name") == "x" * 200
    assert check.name("a:{b}\n%", "name") == "a:{b}\n%"  # keys.py escapes the rest
    with pytest.raises(ConfigurationError, match="must be at most 200 characters, got 201"):
        check.name("x" * 201, "name")
    for bad in ("", None, 7, ("a",)):
        with pytest.raises(ConfigurationError, match="must be a non-empty string"):
            check.name(bad, "name")


@pytest.mark.parametrize(
    "bad", ["a\x00b", "a b", "tab\t", "new\nline", "{tg}", "a}", "\x7f", "nb\xa0sp", "x" * 201]
)
def test_key_prefix_refuses_what_keys_cannot_hold(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        check.key_prefix(bad)
    assert info.value.field == "key_prefix"


def test_key_prefix_takes_the_usual_forms() -> None:
    for good in ("tg", "myapp:tg", "app-1.tg", "a*[b]?", "é"):
        assert check.key_prefix(good) == good


def test_number_is_finite_and_bounded() -> None:
    assert check.number(0.5, "failure_rate", 0.0, 1.0) == 0.5
    assert check.number(7, "open_growth", 1.0) == 7.0
    with pytest.raises(ConfigurationError, match=r"must be between 0\.0 and 1\.0, got 2"):
        check.number(2, "failure_rate", 0.0, 1.0)
    with pytest.raises(ConfigurationError, match=r"must be at least 1\.0, got 0\.5"):
        check.number(0.5, "open_growth", 1.0)
    for bad in (float("inf"), float("nan"), True, "1"):
        with pytest.raises(ConfigurationError, match="must be a finite number"):
            check.number(bad, "early_refresh", 0.0)


def test_choice_flag_text() -> None:
    assert check.choice("b", "mode", ("a", "b")) == "b"
    with pytest.raises(ConfigurationError, match="must be one of a, b, got 'c'"):
        check.choice("c", "mode", ("a", "b"))
    assert check.flag(False, "enabled") is False
    with pytest.raises(ConfigurationError, match="must be true or false, got 1"):
        check.flag(1, "enabled")
    assert check.text("x", "name") == "x"
    for bad in ("", None, 3):
        with pytest.raises(ConfigurationError, match="must be a non-empty string"):
            check.text(bad, "name")


def test_rate() -> None:
    assert check.rate("10/s", "rate_limit") == Rate(10, 1)
    given = Rate(5, 60)
    assert check.rate(given, "rate_limit") is given
    with pytest.raises(ConfigurationError, match="invalid rate '10/x'") as info:
        check.rate("10/x", "rate_limit")
    assert info.value.field == "rate_limit"
    with pytest.raises(ConfigurationError, match="a rate must be a string"):
        check.rate(10, "rate_limit")


def test_import_path() -> None:
    for good in ("proj.celery:app", "proj.celery.app", "proj:app", "a.b:c.d", "_p.c:App"):
        assert check.import_path(good, "celery_app") == good
    for bad in ("proj", "proj:", ":app", "proj.:app", "a..b", "a b.c", "a:b:c", "1p.c"):
        with pytest.raises(ConfigurationError, match="must be an import path such as"):
            check.import_path(bad, "celery_app")
    with pytest.raises(ConfigurationError, match="must be a non-empty string"):
        check.import_path(None, "celery_app")


@pytest.mark.parametrize(
    "call",
    [
        lambda: check.import_path("x", "f", task="proj.t"),
        lambda: check.seconds(-1, "f", task="proj.t"),
        lambda: check.count(0, "f", task="proj.t"),
        lambda: check.number(-1, "f", 0.0, task="proj.t"),
        lambda: check.choice("x", "f", ("y",), task="proj.t"),
        lambda: check.flag("x", "f", task="proj.t"),
        lambda: check.text("", "f", task="proj.t"),
        lambda: check.rate("x", "f", task="proj.t"),
        lambda: check.name("", "f", task="proj.t"),
        lambda: check.key_prefix("a b", "f", task="proj.t"),
    ],
)
def test_every_validator_names_the_task_when_given(call: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        call()
    assert (info.value.task, info.value.field) == ("proj.t", "f")
    assert str(info.value).startswith("[task 'proj.t', field 'f'] ")


def test_the_copies_agree_on_one_message() -> None:
    """A guard, the Celery settings and the drain settings say the same thing."""
    from taskguard.celery import Settings
    from taskguard.drain import DrainSettings
    from taskguard.guards import Lock

    messages = []
    for build in (
        lambda: Lock(ttl=0),
        lambda: Settings.from_mapping({"socket_timeout": 0}),
        lambda: DrainSettings.from_mapping({"lease_ttl": 0}),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        messages.append(info.value.reason)
    assert messages == ["must be positive seconds, got 0"] * 3


def test_allowance_reads_calls_per_period() -> None:
    assert check.allowance("500/day", "limit") == (500, "day")
    assert check.allowance("7 / w", "limit") == (7, "week")
    assert check.allowance("9000/mo", "limit") == (9000, "month")
    for bad in ("5/s", "0/day", "five/day", "5/day\n", 5):
        with pytest.raises(ConfigurationError, match="limit"):
            check.allowance(bad, "limit")
