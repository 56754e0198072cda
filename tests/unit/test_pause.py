"""Pausing a rate limit from the downstream service's feedback, on the memory backend.

``RateLimiter.pause`` / ``observe`` and the header arithmetic behind them; the same
semantics on Redis are in tests/contract/test_pause_contract.py, and in a task
(``self.taskguard``) in test_task_pause.py.
"""

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import taskguard
from taskguard import MemoryBackend, RateLimit, RateLimiter
from taskguard.backend.memory import local_backend
from taskguard.clock import FakeClock
from taskguard.guards.pause import MAX_PAUSE, Pause, observed_pause, pause_seconds

from .celery_harness import DEAD_URL


def limiter(backend: MemoryBackend, rate: str = "10/s", **options: Any) -> RateLimiter:
    return taskguard.connect(backend).rate_limiter("partner-api", rate, **options)


def test_a_pause_refuses_every_call_until_it_ends(backend: MemoryBackend, clock: FakeClock) -> None:
    api = limiter(backend)
    paused = api.pause("acme", 30)
    assert paused == Pause("acme", 30.0)
    assert paused
    denied = api.try_acquire(key="acme")
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(30.0)
    assert api.try_acquire(key="globex").allowed  # another bucket: not paused
    clock.advance(29.999)
    assert not api.try_acquire(key="acme").allowed
    clock.advance(0.001)
    assert api.try_acquire(key="acme").allowed


def test_a_pause_holds_against_a_burst_and_resumes_at_the_steady_rate(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    api = limiter(backend, "10/s", burst=5)  # an idle bucket would admit 5 at once
    api.pause(None, 2)
    assert api.try_acquire().retry_after == pytest.approx(2.0)
    clock.advance(1.6)  # within (burst - 1) x interval of the end: still refused
    assert api.try_acquire().retry_after == pytest.approx(0.4)
    clock.advance(0.4)
    assert api.try_acquire().allowed
    denied = api.try_acquire()  # no burst right after a pause: one call per interval
    assert denied.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert api.try_acquire().allowed


def test_a_pause_never_shortens_a_longer_backlog(backend: MemoryBackend, clock: FakeClock) -> None:
    api = limiter(backend, "1/m")
    assert api.try_acquire().allowed  # the next call is due in 60 s
    assert api.pause(None, 5).retry_after == pytest.approx(60.0)
    assert api.try_acquire().retry_after == pytest.approx(60.0)
    assert api.pause(None, timedelta(minutes=2)).retry_after == pytest.approx(120.0)
    assert api.pause(None, 0).retry_after == pytest.approx(120.0)


def test_calls_refused_during_a_pause_reserve_slots_from_its_end(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    spec = RateLimit("2/s", name="partner-api")
    api = RateLimiter(backend, spec)
    api.pause(None, 10)
    op = spec.op(backend.keys)
    slots = [backend.admit([op], reserve_within=30) for _ in range(3)]
    assert all(a.reserved for a in slots)
    assert [a.retry_after for a in slots] == pytest.approx([10.0, 10.5, 11.0])


def test_pausing_a_name_nobody_uses_sets_its_state(backend: MemoryBackend) -> None:
    # No task or limiter has used this bucket: the pause is recorded for whoever comes.
    assert limiter(backend).pause("never-seen", 3).retry_after == pytest.approx(3.0)
    assert backend.state.values[backend.keys.rate_limit("partner-api", "never-seen")]


def test_observe_pauses_until_the_reset_when_nothing_remains(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    api = limiter(backend)
    reset = clock.time() + 42
    assert api.observe("acme", remaining="5", reset_at=str(int(reset))) == Pause("acme")
    assert api.try_acquire(key="acme").allowed
    paused = api.observe("acme", remaining="0", reset_at=str(int(reset)))
    assert paused.retry_after == pytest.approx(42.0)
    assert api.try_acquire(key="acme").retry_after == pytest.approx(42.0)
    as_date = datetime.fromtimestamp(clock.time() + 50, timezone.utc)
    assert api.observe("acme", remaining=0, reset_at=as_date).retry_after == pytest.approx(50.0)


def test_observe_paces_the_calls_remaining_until_the_reset(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    api = limiter(backend, "100/s")
    starts = []
    reset = clock.time() + 10
    for remaining in (4, 3, 2, 1):
        decision = api.acquire(key="acme")  # sleeps on the fake clock until admitted
        starts.append(clock.time())
        api.observe("acme", remaining=remaining, reset_at=reset, pace=True)
        assert decision.allowed
    # 10 s / 4 left, then 7.5 s / 3, 5 s / 2: the calls left spread evenly to the reset.
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([2.5, 2.5, 2.5])


def test_a_reset_in_the_past_pauses_nothing(backend: MemoryBackend, clock: FakeClock) -> None:
    api = limiter(backend)
    assert not api.observe("acme", remaining=0, reset_at=clock.time() - 2)
    assert api.try_acquire(key="acme").allowed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "seconds must be from 0 to 2678400 seconds"),
        (MAX_PAUSE + 1, "seconds must be from 0 to"),
        (float("nan"), "seconds must be finite"),
        (float("inf"), "seconds must be finite"),
        (True, "seconds must be a number, got bool"),
        (None, "seconds must be a number, got NoneType"),
        ("soon", "seconds must be a number, got 'soon'"),
        (timedelta(seconds=-1), "seconds must be from 0"),
    ],
)
def test_pause_seconds_are_checked(backend: MemoryBackend, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        limiter(backend).pause("acme", value)


def test_pause_takes_header_text_and_timedeltas() -> None:
    assert pause_seconds(" 30 ") == 30.0
    assert pause_seconds("1.5") == 1.5
    assert pause_seconds(timedelta(minutes=2)) == 120.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"remaining": -1, "reset_after": 5}, "remaining must be an integer >= 0"),
        ({"remaining": True, "reset_after": 5}, "remaining must be an integer >= 0"),
        ({"remaining": "many", "reset_after": 5}, "remaining must be an integer >= 0"),
        ({"remaining": 1.5, "reset_after": 5}, "remaining must be an integer >= 0"),
        ({"remaining": 0}, "reset_at or reset_after is needed when remaining is 0"),
        ({"remaining": 3, "pace": True}, "reset_at or reset_after is needed when pace is set"),
        ({"remaining": 0, "reset_at": 1030, "reset_after": 30}, "not both"),
        ({"remaining": 0, "reset_after": -3}, "reset_after must be from 0"),
        ({"remaining": 0, "reset_at": "later"}, "reset_at must be a number"),
        ({"remaining": 0, "reset_at": datetime(2030, 1, 1)}, "reset_at must be an aware datetime"),
        ({"remaining": 0, "reset_at": 1000 + MAX_PAUSE + 1}, "milliseconds instead of seconds"),
        ({"remaining": 3, "reset_after": 5, "pace": "yes"}, "pace must be True or False"),
    ],
)
def test_observed_headers_are_checked(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        observed_pause(now=1000.0, **arguments)


def test_a_delta_given_as_reset_at_is_refused() -> None:
    # "Reset: 30" (seconds from now) read as an epoch time would be 1970: no silent no-op.
    with pytest.raises(ValueError, match="for seconds from now, pass reset_after"):
        observed_pause(remaining=0, reset_at=30, now=1_750_000_000.0)


def test_observed_pause_arithmetic() -> None:
    assert observed_pause(remaining=0, reset_after=12, now=1000.0) == 12.0
    assert observed_pause(remaining=4, reset_after=12, pace=True, now=1000.0) == 3.0
    assert observed_pause(remaining=4, reset_after=12, now=1000.0) == 0.0
    assert observed_pause(remaining=0, reset_at=990, now=1000.0) == 0.0  # reset already


def test_a_pause_while_redis_is_down_is_degraded_and_never_raises() -> None:
    client = taskguard.connect(DEAD_URL, socket_connect_timeout=0.05)
    try:
        api = client.rate_limiter("partner-api", "10/s")
        paused = api.pause("acme", 5)
        assert paused == Pause("acme", 5.0, degraded=True)
        assert api.observe("acme", remaining=0, reset_after=7).degraded
    finally:
        client.close()


def test_a_local_limiter_keeps_its_pause_in_the_process_while_redis_is_down() -> None:
    client = taskguard.connect(DEAD_URL, socket_connect_timeout=0.05)
    try:
        api = client.rate_limiter("partner-api", "10/s", on_outage="local")
        assert api.pause("acme", 5).degraded
        local = RateLimiter(local_backend(client.backend), api.spec)
        assert local.try_acquire(key="acme").retry_after == pytest.approx(5.0, abs=0.5)
    finally:
        client.close()
