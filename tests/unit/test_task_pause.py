"""``self.taskguard`` in one process: a task pauses a rate limit after a 429, follows the
service's headers, and ends its run deferred without spending a retry.

A memory backend on a fake clock and kombu's memory broker (celery_harness.py); the same
across real workers is tests/integration/test_pause_fleet.py.
"""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

import taskguard
from taskguard import DeferralExhausted, GuardedTask, Lock, RateLimit, RateLimited
from taskguard.celery._deferral import HEADER_COUNT, HEADER_RESERVATION
from taskguard.celery._runtime import runtime_for
from taskguard.clock import FakeClock
from taskguard.guards.pause import Pause
from taskguard.keys import KeySchema

from .celery_harness import celery_app, of, published, recorded, run_as_worker

PARTNER = RateLimit("10/s", burst=10, key="{customer}", name="partner-api")


@pytest.fixture
def app(backend: taskguard.MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend, reserve_within=60) as app:
        yield app


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    with recorded("task_deferred", "guard_released", "deferral_exhausted") as seen:
        yield seen


def partner(backend: taskguard.Backend) -> taskguard.RateLimiter:
    return taskguard.RateLimiter(backend, PARTNER)


def test_a_429_pauses_the_bucket_for_everyone_and_defers_the_task(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock, events: list[Any]
) -> None:
    calls: list[str] = []

    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> str:
        calls.append(self.request.id)
        if len(calls) == 1:  # the partner answers 429, Retry-After: 30
            self.taskguard.pause("partner-api", seconds="30", defer=True)
        return "pushed"

    with pytest.raises(Ignore, match="deferred by taskguard"):
        run_as_worker(push, "acme", task_id="first")
    [message] = published(app)
    headers = message.headers
    assert headers["id"] == "first"
    assert headers["retries"] == 0  # no retry spent
    assert headers[HEADER_COUNT] == 1
    # Its own bucket: it holds the first slot after the pause.
    assert headers[HEADER_RESERVATION]["slot"] == pytest.approx(time.time() + 30, abs=1)
    [deferred] = of(events, "task_deferred")
    assert deferred["delay"] == pytest.approx(30.0, abs=0.1)
    assert deferred["reserved"] is True
    assert "partner-api" in deferred["reason"]
    assert of(events, "guard_released")[0]["outcome"] == "ignored"

    # Every other call of that customer is refused until the pause ends, and reserves
    # the next slot after it; other customers run.
    assert partner(backend).try_acquire(key="acme").retry_after == pytest.approx(30.1)
    with pytest.raises(Ignore):
        run_as_worker(push, "acme", task_id="second")
    [second] = published(app)
    assert of(events, "task_deferred")[-1]["delay"] == pytest.approx(30.1)
    assert run_as_worker(push, "globex", task_id="third") == "pushed"

    clock.advance(29.9)
    with pytest.raises(Ignore):  # a newcomer just before the end of the pause
        run_as_worker(push, "acme", task_id="fourth")
    published(app)
    clock.advance(0.1)
    assert run_as_worker(push, "acme", task_id="first", headers=headers) == "pushed"
    clock.advance(0.1)  # then one per interval: the limit's steady rate
    assert run_as_worker(push, "acme", task_id="second", headers=second.headers) == "pushed"
    assert calls == ["first", "third", "first", "second"]  # the others were refused at start


def test_pause_returns_what_it_did_and_the_run_goes_on(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> Pause:
        return self.taskguard.pause("partner-api", seconds=12)  # the run's own bucket

    assert run_as_worker(push, "acme") == Pause("acme", 12.0)
    assert published(app) == []
    assert not partner(backend).try_acquire(key="acme").allowed


def test_pause_of_another_bucket_or_a_limit_the_task_does_not_carry(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    bursty = RateLimit("10/s", burst=5, name="bursty-api")

    @app.task(shared=False, base=GuardedTask, guards=[bursty])
    def other() -> None: ...

    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> list[Pause]:
        return [
            self.taskguard.pause("partner-api", key="globex", seconds=5),
            self.taskguard.pause("bursty-api", seconds=5),  # carried by another task
            self.taskguard.pause("nobody-uses-this", key=7, seconds=5),
        ]

    assert [p.key for p in run_as_worker(push, "acme")] == ["globex", None, "7"]
    assert partner(backend).try_acquire(key="acme").allowed
    assert not partner(backend).try_acquire(key="globex").allowed
    # The other task's limit is known, so the pause holds against its burst of 5 too.
    denied = taskguard.RateLimiter(backend, bursty).try_acquire()
    assert denied.retry_after == pytest.approx(5.0)
    nobody = taskguard.connect(backend).rate_limiter("nobody-uses-this", "1/s")
    assert nobody.try_acquire(key=7).retry_after == pytest.approx(5.0)


def test_observe_pauses_when_nothing_remains_and_defer_waits_it_out(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock, events: list[Any]
) -> None:
    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str, remaining: str) -> None:
        reset = str(int(clock.time()) + 20)
        if self.taskguard.observe("partner-api", remaining=remaining, reset_at=reset):
            self.taskguard.defer()

    assert run_as_worker(push, "acme", "3") is None
    assert published(app) == []
    with pytest.raises(Ignore):
        run_as_worker(push, "acme", "0", task_id="tid-2")
    [deferred] = of(events, "task_deferred")
    assert 19.0 <= deferred["delay"] <= 20.0
    assert partner(backend).try_acquire(key="acme").retry_after == pytest.approx(20.0, abs=1)


def test_after_pausing_a_bucket_not_its_own_a_run_comes_back_by_time(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> None:
        self.taskguard.pause("partner-api", key="globex", seconds=3)
        self.taskguard.pause("partner-api", seconds=1)  # shorter: the other one decides
        self.taskguard.defer()

    with pytest.raises(Ignore):
        run_as_worker(push, "acme")
    [deferred] = of(events, "task_deferred")
    assert (deferred["reserved"], deferred["delay"]) == (False, pytest.approx(3.0, abs=0.1))
    assert "'globex'" in deferred["reason"]
    [message] = published(app)
    assert message.headers[HEADER_RESERVATION] is None
    # No slot was taken in its own bucket either: the next call there waits 1 s only.
    assert partner(backend).try_acquire(key="acme").retry_after == pytest.approx(1.0)


def test_with_reservations_off_a_run_comes_back_by_time(app: Celery, events: list[Any]) -> None:
    app.conf.taskguard = {"reserve_within": 0, "deferral_jitter": 0}
    runtime_for(app).reload()

    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> None:
        self.taskguard.pause("partner-api", seconds=4, defer=True)

    with pytest.raises(Ignore):
        run_as_worker(push, "acme")
    [deferred] = of(events, "task_deferred")
    assert (deferred["reserved"], deferred["delay"]) == (False, pytest.approx(4.0, abs=0.1))


def test_defer_without_a_pause_comes_back_at_once_or_after_countdown(
    app: Celery, events: list[Any]
) -> None:
    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str, countdown: float | None) -> None:
        self.taskguard.defer(countdown)

    with pytest.raises(Ignore):
        run_as_worker(push, "acme", None)
    with pytest.raises(Ignore):
        run_as_worker(push, "acme", 2.5, task_id="tid-2")
    delays = [kw["delay"] for kw in of(events, "task_deferred")]
    assert delays == pytest.approx([0.0, 2.5])
    assert next(kw["reason"] for kw in of(events, "task_deferred")) == "deferred by the task itself"
    with pytest.raises(ValueError, match="countdown must be from 0"):
        run_as_worker(push, "acme", -1, task_id="tid-3")


def test_deferring_counts_against_the_caps(app: Celery, events: list[Any]) -> None:
    app.conf.taskguard = {"max_deferrals": 2}
    runtime_for(app).reload()

    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> None:
        self.taskguard.pause("partner-api", seconds=1, defer=True)

    with pytest.raises(DeferralExhausted):
        run_as_worker(push, "acme", headers={HEADER_COUNT: 2, "taskguard-deferred-since": 1.0})
    assert len(of(events, "deferral_exhausted")) == 1
    assert published(app) == []


def test_eager_runs_raise_instead_of_deferring(app: Celery) -> None:
    app.conf.task_always_eager = True

    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> None:
        self.taskguard.pause("partner-api", seconds=8, defer=True)

    with pytest.raises(RateLimited) as info:
        push.delay("acme").get()
    assert info.value.retry_after == pytest.approx(8.0, abs=0.1)
    assert info.value.key == "acme"


def test_a_deferred_run_keeps_its_uniqueness_claim(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    @app.task(
        shared=False,
        bind=True,
        base=GuardedTask,
        guards=[PARTNER, Lock(key="{customer}", mode="until_executed")],
    )
    def push(self: Any, customer: str, defer: bool) -> None:
        if defer:
            self.taskguard.defer(5)

    claim = backend.keys.unique(push.name, "acme")
    first = push.apply_async(("acme", True))
    published(app)
    with pytest.raises(Ignore):
        run_as_worker(push, "acme", True, task_id=first.id)
    assert backend.owner(claim) == first.id  # the deferred message still owns it
    assert push.apply_async(("acme", True)).id == first.id  # a duplicate is not queued
    [message] = published(app)
    assert message.headers["id"] == first.id
    assert run_as_worker(push, "acme", False, task_id=first.id) is None
    assert backend.owner(claim) is None


def test_arguments_are_checked(app: Celery) -> None:
    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str, call: str) -> None:
        helper = self.taskguard
        if call == "name":
            helper.pause("", seconds=1)
        elif call == "seconds":
            helper.pause("partner-api", seconds=-5)
        elif call == "key":
            helper.pause("partner-api", key=1.5, seconds=1)
        else:
            helper.observe("partner-api", remaining=0)

    with pytest.raises(taskguard.ConfigurationError, match="field 'name'"):
        run_as_worker(push, "acme", "name")
    with pytest.raises(ValueError, match="seconds must be from 0"):
        run_as_worker(push, "acme", "seconds")
    with pytest.raises(TypeError, match="key"):
        run_as_worker(push, "acme", "key")
    with pytest.raises(ValueError, match="reset_at or reset_after is needed"):
        run_as_worker(push, "acme", "observe")


def test_a_templated_bucket_needs_a_key_outside_a_run(app: Celery) -> None:
    @app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
    def push(self: Any, customer: str) -> None: ...

    with pytest.raises(ValueError, match="key is needed outside a task run"):
        push.taskguard.pause("partner-api", seconds=1)
    assert push.taskguard.pause("partner-api", key="acme", seconds=1) == Pause("acme", 1.0)
    assert "RunGuards" in repr(push.taskguard)


def test_a_run_pauses_another_bucket_of_a_tagged_limit_by_its_tag(clock: FakeClock) -> None:
    # On a Cluster (a spread key schema) a limit placed by tag keeps a bucket in its
    # tag's slot: another bucket than the run's is named by its key and its tag.
    spread = taskguard.MemoryBackend(clock=clock, keys=KeySchema("tgs", spread=True))
    tagged = RateLimit("10/s", key="{customer}:{region}", tag="{customer}", name="regional")
    with celery_app(spread) as app:

        @app.task(shared=False, bind=True, base=GuardedTask, guards=[tagged])
        def push(self: Any, customer: str, region: str, tag: str | None) -> Pause:
            return self.taskguard.pause("regional", key="acme:us", seconds=5, tag=tag)

        with pytest.raises(ValueError, match=r"give bucket 'acme:us''s tag too \(tag="):
            run_as_worker(push, "acme", "eu", None)
        clock.advance(1)  # the run's own bucket has its token again
        assert run_as_worker(push, "acme", "eu", "acme") == Pause("acme:us", 5.0)
        clock.advance(1)
    limiter = taskguard.RateLimiter(spread, tagged)
    assert limiter.try_acquire("acme:us", tag="acme").retry_after == pytest.approx(4.0)
    assert limiter.try_acquire("acme:eu", tag="acme").allowed  # the run's own bucket
