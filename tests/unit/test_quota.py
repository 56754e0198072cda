"""Calendar quotas on the memory backend and a fake clock: windows, resets, DST, settings
and task runs."""

from __future__ import annotations

from datetime import datetime, timezone
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery.exceptions import Ignore

import taskguard
from taskguard import ConfigurationError, GuardedTask, Quota, QuotaLimiter, RateLimit, RateLimited
from taskguard.celery import runtime_for
from taskguard.clock import FakeClock
from taskguard.guards import quota as quota_module
from taskguard.guards.quota import window_starts

from .celery_harness import celery_app, of, published, recorded, run_as_worker

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0


def at(text: str, tz: ZoneInfo = BERLIN) -> float:
    """Epoch seconds of a local wall-clock time, ``"2026-03-28 12:00"``."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz).timestamp()


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=at("2026-03-28 12:00"))


@pytest.fixture
def backend(clock: FakeClock) -> taskguard.MemoryBackend:
    return taskguard.MemoryBackend(clock=clock)


@pytest.fixture
def on_clock(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Task runs build their quota windows from the fake clock too."""
    monkeypatch.setattr(quota_module, "_time", clock)
    return clock


def test_daily_windows_follow_dst() -> None:
    # Berlin moves its clocks forward on 2026-03-29: that day is 23 hours long.
    starts = window_starts(at("2026-03-29 12:00"), "day", clock_time(0, 0), BERLIN, 0)
    assert [utc(s) for s in starts] == [
        "2026-03-26 23:00",
        "2026-03-27 23:00",
        "2026-03-28 23:00",  # the current window: Berlin midnight, still CET
        "2026-03-29 22:00",  # the next midnight is CEST: 23 hours later
        "2026-03-30 22:00",
    ]


def test_reset_time_weekly_and_monthly_windows() -> None:
    now = at("2026-05-13 09:00", ZoneInfo("UTC"))  # a Wednesday
    daily = window_starts(now, "day", clock_time(10, 30), ZoneInfo("UTC"), 0)
    assert utc(daily[2]) == "2026-05-12 10:30"  # 10:30 today has not come yet
    weekly = window_starts(now, "week", clock_time(0, 0), ZoneInfo("UTC"), 0)
    assert [utc(s) for s in weekly[1:4]] == [
        "2026-05-04 00:00",
        "2026-05-11 00:00",  # this week's Monday
        "2026-05-18 00:00",
    ]
    monthly = window_starts(now, "month", clock_time(0, 0), ZoneInfo("UTC"), 15)
    assert [utc(s) for s in monthly] == [
        "2026-02-15 00:00",
        "2026-03-15 00:00",
        "2026-04-15 00:00",  # the 15th of May is still ahead
        "2026-05-15 00:00",
        "2026-06-15 00:00",
    ]
    january = window_starts(at("2026-01-02 00:00"), "month", clock_time(0, 0), BERLIN, 1)
    assert utc(january[2]) == "2025-12-31 23:00"  # across the year boundary


def test_used_up_until_the_reset_then_full_again(
    backend: taskguard.MemoryBackend, clock: FakeClock
) -> None:
    quota = QuotaLimiter(backend, Quota("3/day", tz="Europe/Berlin", name="sms"))
    assert [quota.try_acquire("+44").allowed for _ in range(4)] == [True, True, True, False]
    denied = quota.try_acquire("+44")
    assert denied.retry_after == pytest.approx(12 * HOUR)  # to Berlin midnight
    assert quota.remaining("+44") == 0
    assert quota.remaining("+49") == 3  # each key has its own quota
    clock.advance(12 * HOUR - 1)
    assert not quota.try_acquire("+44").allowed
    clock.advance(1)
    assert quota.try_acquire("+44").remaining == 2
    quota.acquire("+44")
    quota.acquire("+44")
    with pytest.raises(RateLimited) as raised:
        quota.acquire("+44")
    assert raised.value.retry_after == pytest.approx(23 * HOUR)  # 2026-03-29 has 23 hours


def test_cost_and_a_reset_time(backend: taskguard.MemoryBackend, clock: FakeClock) -> None:
    quota = QuotaLimiter(backend, Quota("10/day", reset="13:00", tz="Europe/Berlin", cost=4))
    assert quota.try_acquire().remaining == 6
    assert quota.try_acquire().remaining == 2
    refused = quota.try_acquire()
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(HOUR)  # 13:00 is an hour away
    assert quota.try_acquire(cost=2).remaining == 0


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"limit": "10/s"}, "limit", "calls per day, week or month"),
        ({"limit": "0/day"}, "limit", "positive"),
        ({"reset": "24:00"}, "reset", "HH:MM"),
        ({"tz": "Mars/Olympus"}, "tz", "unknown time zone"),
        ({"limit": "5/month", "day": 31}, "day", "1 to 28"),
        ({"day": 7}, "day", "0 to 6"),
        ({"cost": 20}, "cost", "exceeds the limit"),
        ({"on_outage": "maybe"}, "on_outage", "allow, deny, local"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        Quota(**{"limit": "10/day", **options})
    assert raised.value.field == field


def test_spec_values() -> None:
    spec = Quota("10000/d", reset="06:00", tz="Europe/Berlin", key="{customer_id}")
    assert spec == Quota("10000/day", reset="06:00", tz="Europe/Berlin", key="{customer_id}")
    shown = "Quota('10000/day', reset='06:00', tz='Europe/Berlin', key='{customer_id}')"
    assert repr(spec) == shown
    assert repr(Quota("5/mo", day=15)) == "Quota('5/month', day=15)"
    assert spec.replace(limit="20/day").calls == 20


def test_settings_build_quotas_in_admission_order(backend: taskguard.MemoryBackend) -> None:
    with celery_app(
        backend,
        tasks={
            "unit.bare": {"quota": "100/day", "rate_limit": "1/s"},
            "unit.mapping": {"quota": {"limit": "5/week", "key": "{user}", "tz": "UTC"}},
        },
    ) as app:

        @app.task(name="unit.bare", shared=False, base=GuardedTask, guards=[])
        def bare() -> None: ...

        @app.task(name="unit.mapping", shared=False, base=GuardedTask)
        def mapping(user: str) -> None: ...

        guards = bare.taskguard_settings.guards
        assert [type(g) for g in guards] == [Quota, RateLimit]  # quota before rate limit
        assert guards[0] == Quota("100/day", name="unit.bare")
        assert mapping.taskguard_settings.guards == (
            Quota("5/week", key="{user}", name="unit.mapping"),
        )


def test_an_unknown_quota_setting_is_refused(backend: taskguard.MemoryBackend) -> None:
    with celery_app(backend, tasks={"unit.*": {"quota": {"limit": "5/day", "every": 2}}}) as app:
        with pytest.raises(ConfigurationError, match="unknown quota field 'every'") as raised:
            runtime_for(app).settings  # noqa: B018 - reading validates
        assert raised.value.field == "quota.every"


def test_a_refused_task_defers_to_the_reset(
    backend: taskguard.MemoryBackend, on_clock: FakeClock
) -> None:
    with celery_app(backend, max_deferral_delay=86400, max_deferral_age=86400) as app:

        @app.task(shared=False, base=GuardedTask, guards=[Quota("1/day", tz="Europe/Berlin")])
        def report(day: str) -> str:
            return f"sent {day}"

        with recorded("task_deferred") as events:
            assert run_as_worker(report, "sat", task_id="t1") == "sent sat"
            with pytest.raises(Ignore):
                run_as_worker(report, "sat", task_id="t2")
        [deferred] = of(events, "task_deferred")
        assert deferred["delay"] == pytest.approx(12 * HOUR)
        [message] = published(app)
        assert message.headers["id"] == "t2"
        on_clock.advance(12 * HOUR)
        report.push_request(
            id="t2",
            args=("sun",),
            kwargs={},
            called_directly=False,
            is_eager=False,
            headers=message.headers,
            retries=0,
            delivery_info={"exchange": "", "routing_key": app.conf.task_default_queue},
        )
        try:
            assert report("sun") == "sent sun"  # the redelivered message runs after the reset
        finally:
            report.pop_request()


def test_eager_runs_raise_when_used_up(
    backend: taskguard.MemoryBackend, on_clock: FakeClock
) -> None:
    with celery_app(backend) as app:
        app.conf.task_always_eager = True

        @app.task(shared=False, base=GuardedTask, guards=[Quota("1/day", key="{user}")])
        def export(user: str) -> str:
            return user

        assert export.delay("ada").get() == "ada"
        assert export.delay("bob").get() == "bob"
        result = export.delay("ada")
        assert result.failed()
        assert isinstance(result.result, RateLimited)
