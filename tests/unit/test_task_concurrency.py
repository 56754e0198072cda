"""GuardedTask with concurrency caps, in one process.

Guard state is a MemoryBackend on a fake clock (a slot expires only when the test moves
time) and the broker is kombu's memory transport, so a deferred task's message can be
read back. Other runs holding slots are simulated by taking them directly.
"""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

import taskguard
from taskguard import Concurrency, ConcurrencyLimitReached, GuardedTask, RateLimit
from taskguard.backend.memory import local_backend
from taskguard.backend.ops import RateOp, SlotOp
from taskguard.celery._runtime import runtime_for
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for

from .celery_harness import DEAD_URL, celery_app, of, published, recorded, run_as_worker

SIGNALS = ("slot_acquired", "slot_denied", "task_deferred", "guard_denied", "lease_lost")


@pytest.fixture
def backend() -> taskguard.MemoryBackend:
    return taskguard.MemoryBackend(clock=FakeClock())


@pytest.fixture
def app(backend: taskguard.MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        yield app


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    with recorded(*SIGNALS) as seen:
        yield seen


def other_run(
    backend: taskguard.Backend,
    task: Any,
    bucket: str | None = None,
    *,
    limit: int = 1,
    ttl: float = 60,
    owner: str = "other-run",
) -> SlotOp:
    """Take one of ``task``'s slots as another run would (same keys, another owner)."""
    keys = backend.keys
    slot = SlotOp(
        keys.slots(task.name, bucket),
        owner=owner,
        ttl=ttl,
        limit=limit,
        wakeup_key=keys.slot_wakeup(task.name, bucket),
    )
    assert backend.admit([slot]).allowed
    return slot


def free_slots(backend: taskguard.Backend, task: Any, limit: int, bucket: str | None = None) -> int:
    """How many of ``task``'s ``limit`` slots are free (taken and given back to count)."""
    taken = []
    for n in range(limit):
        probe = SlotOp(
            backend.keys.slots(task.name, bucket), owner=f"probe-{n}", ttl=5, limit=limit
        )
        if not backend.admit([probe]).allowed:
            break
        taken.append(probe)
    backend.release(taken)
    return len(taken)


def test_admitted_run_holds_a_slot_and_releases_it(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    @app.task(shared=False, base=GuardedTask, bind=True, guards=[Concurrency(2)])
    def job(self: Any) -> tuple[int, int]:
        return free_slots(backend, self, 2), len(heartbeat_for(backend))

    assert run_as_worker(job) == (1, 1)  # one slot ours, renewed by the heartbeat
    assert free_slots(backend, job, 2) == 2
    assert len(heartbeat_for(backend)) == 0
    [acquired] = of(events, "slot_acquired")
    assert (acquired["task_id"], acquired["key"], acquired["limit"]) == (
        "tid-1",
        backend.keys.slots(job.name),
        2,
    )
    assert of(events, "slot_denied") == []


def test_a_failing_run_releases_its_slot(app: Celery, backend: taskguard.MemoryBackend) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Concurrency(1)])
    def job() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_as_worker(job)
    assert free_slots(backend, job, 1) == 1
    with pytest.raises(ValueError, match="boom"):
        run_as_worker(job, task_id="tid-2")  # not refused: the first run gave its slot back


def test_a_full_cap_defers_with_the_same_id_within_retry_delay(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Concurrency(1, retry_delay=2)])
    def job() -> None:
        raise AssertionError("must not run")

    holder = other_run(backend, job, ttl=60)
    with pytest.raises(Ignore):
        run_as_worker(job)
    [message] = published(app)
    assert message.headers["id"] == "tid-1"
    [denied] = of(events, "slot_denied")
    assert (denied["task_id"], denied["key"], denied["limit"]) == ("tid-1", holder.key, 1)
    assert denied["retry_after"] == pytest.approx(60)
    # The holder renews its slot: its expiry says little; come back after retry_delay.
    [deferred] = of(events, "task_deferred")
    assert deferred["delay"] == pytest.approx(2)
    assert of(events, "slot_acquired") == []
    assert free_slots(backend, job, 1) == 0  # the holder kept its slot


def test_a_holder_expiring_sooner_than_retry_delay_sets_the_delay(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Concurrency(1, retry_delay=2)])
    def job() -> None: ...

    other_run(backend, job, ttl=0.5)
    with pytest.raises(Ignore):
        run_as_worker(job)
    assert [d["delay"] for d in of(events, "task_deferred")] == [pytest.approx(0.5)]


def test_per_key_caps_are_independent(app: Celery, backend: taskguard.MemoryBackend) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Concurrency(1, key="{tenant}")])
    def job(tenant: str) -> str:
        return tenant

    other_run(backend, job, "acme")
    assert run_as_worker(job, "globex") == "globex"
    with pytest.raises(Ignore):
        run_as_worker(job, "acme", task_id="tid-2")


def test_wait_is_woken_by_a_release_instead_of_deferring(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Concurrency(1, wait=10)])
    def job() -> str:
        return "ran"

    holder = other_run(backend, job)
    timer = threading.Timer(0.2, backend.release, args=[[holder]])
    timer.start()
    started = time.monotonic()
    try:
        assert run_as_worker(job) == "ran"
    finally:
        timer.join()
    assert time.monotonic() - started < 5  # the holder's TTL is 60 s, the wait 10 s
    assert published(app) == []


def test_wait_is_bounded_then_defers(app: Celery, backend: taskguard.MemoryBackend) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Concurrency(1, wait=0.3)])
    def job() -> None:
        raise AssertionError("must not run")

    other_run(backend, job)
    started = time.monotonic()
    with pytest.raises(Ignore):
        run_as_worker(job)
    assert time.monotonic() - started >= 0.25
    assert len(published(app)) == 1


def test_a_full_cap_behind_a_rate_limit_still_defers_within_retry_delay(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    guards = [RateLimit("6/m"), Concurrency(1, retry_delay=2)]

    @app.task(shared=False, base=GuardedTask, guards=guards)
    def job() -> None: ...

    assert backend.admit([RateOp(backend.keys.rate_limit(job.name), interval=10.0, burst=1)])
    other_run(backend, job, ttl=60)
    with pytest.raises(Ignore):
        run_as_worker(job)
    [deferred] = of(events, "task_deferred")
    assert deferred["delay"] <= 10  # the rate limit's wait; the slot's is retry_delay


def test_eager_denial_raises(app: Celery, backend: taskguard.MemoryBackend) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Concurrency(1)])
    def job() -> str:
        return "ok"

    assert job.apply().get() == "ok"
    other_run(backend, job, ttl=30)
    result = job.apply()
    assert result.failed()
    assert isinstance(result.result, ConcurrencyLimitReached)
    assert result.result.retry_after == pytest.approx(30)


def test_settings_cap_a_plain_guarded_task(backend: taskguard.MemoryBackend) -> None:
    with celery_app(backend, tasks={"unit.capped": {"concurrency": {"limit": 1}}}) as app:

        @app.task(shared=False, base=GuardedTask, name="unit.capped")
        def capped() -> int:
            return free_slots(backend, capped, 1)

        assert run_as_worker(capped) == 0
        other_run(backend, capped)
        with pytest.raises(Ignore):
            run_as_worker(capped, task_id="tid-2")


# ---------------------------------------------------------------- Redis outage


@pytest.fixture
def dead_app() -> Iterator[Celery]:
    with celery_app(taskguard.connect(DEAD_URL).backend) as app:
        yield app


def test_outage_defers_by_default(dead_app: Celery, events: list[Any]) -> None:
    @dead_app.task(shared=False, base=GuardedTask, guards=[Concurrency(3)])
    def job() -> None:
        raise AssertionError("must not run without a slot")

    with pytest.raises(Ignore):
        run_as_worker(job)
    [message] = published(dead_app)
    assert message.headers["id"] == "tid-1"
    [deferred] = of(events, "task_deferred")
    assert "backend unavailable" in deferred["reason"]
    assert of(events, "slot_denied") == []  # nobody holds the slots: Redis is down
    assert of(events, "guard_denied")[0]["degraded"] is True


def test_outage_local_caps_within_the_process_and_releases(
    dead_app: Celery, events: list[Any]
) -> None:
    local = local_backend(runtime_for(dead_app).backend)

    @dead_app.task(
        shared=False, base=GuardedTask, bind=True, guards=[Concurrency(1, on_outage="local")]
    )
    def job(self: Any) -> int:
        return free_slots(local, self, 1)

    assert run_as_worker(job) == 0  # its slot is held in this process while it runs
    assert free_slots(local, job, 1) == 1  # and given back afterwards
    assert run_as_worker(job, task_id="tid-2") == 0
    holder = other_run(local, job)
    with pytest.raises(Ignore):
        run_as_worker(job, task_id="tid-3")
    assert len(published(dead_app)) == 1
    assert local.release([holder]) == [True]
    assert run_as_worker(job, task_id="tid-4") == 0


def test_outage_local_denial_defers_within_retry_delay(dead_app: Celery, events: list[Any]) -> None:
    local = local_backend(runtime_for(dead_app).backend)
    spec = Concurrency(1, on_outage="local", retry_delay=2)

    @dead_app.task(shared=False, base=GuardedTask, guards=[spec])
    def job() -> None: ...

    other_run(local, job, ttl=60)
    with pytest.raises(Ignore):
        run_as_worker(job)
    [deferred] = of(events, "task_deferred")
    assert deferred["delay"] <= 2
