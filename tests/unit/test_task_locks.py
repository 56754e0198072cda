"""GuardedTask with run-time locks, in one process.

Guard state is a MemoryBackend on a fake clock (a lease expires only when the test moves
time) and the broker is kombu's memory transport, so a deferred task's message can be read
back. The other holder of a lock is simulated by taking its lease directly.
"""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

import taskguard
from taskguard import GuardedTask, Lock, LockHeld, RateLimit
from taskguard.backend.memory import local_backend
from taskguard.backend.ops import LeaseOp
from taskguard.celery._runtime import runtime_for
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for

from .celery_harness import DEAD_URL, celery_app, of, published, recorded, run_as_worker

SIGNALS = ("lock_conflict", "lease_lost", "task_deferred", "guard_denied", "guard_released")


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    with recorded(*SIGNALS) as seen:
        yield seen


def other_holder(backend: taskguard.Backend, task: Any, bucket: str, ttl: float = 60) -> LeaseOp:
    """Take ``task``'s lock on ``bucket`` as another run would (same keys, another owner)."""
    keys = backend.keys
    lease = LeaseOp(
        keys.lock(task.name, bucket),
        owner="other-run",
        ttl=ttl,
        fence_key=keys.fence(task.name, bucket),
        wakeup_key=keys.wakeup(task.name, bucket),
    )
    assert backend.admit([lease]).allowed
    return lease


def test_admitted_run_gets_a_fencing_token_and_releases(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    @app.task(shared=False, base=GuardedTask, bind=True, guards=[Lock(key="{order_id}")])
    def ship(self: Any, order_id: int) -> tuple[Any, str | None, int]:
        key = backend.keys.lock(self.name, str(order_id))
        return self.request.taskguard.fencing_token, backend.owner(key), len(heartbeat_for(backend))

    first, owner, renewing = run_as_worker(ship, 7)
    assert isinstance(first, int)
    assert first > 0
    assert owner is not None
    assert owner.startswith("tid-1:")
    assert renewing == 1  # the heartbeat renews the lock while the task runs
    assert backend.owner(backend.keys.lock(ship.name, "7")) is None
    assert len(heartbeat_for(backend)) == 0
    second, _, _ = run_as_worker(ship, 7, task_id="tid-2")
    assert second > first


def test_other_keys_are_not_blocked(app: Celery, backend: taskguard.MemoryBackend) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{order_id}")])
    def ship(order_id: int) -> int:
        return order_id

    other_holder(backend, ship, "7")
    assert run_as_worker(ship, 8) == 8


def test_conflict_defers_with_the_same_id(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    ran = []

    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{order_id}", ttl=60)])
    def ship(order_id: int) -> None:
        ran.append(order_id)

    holder = other_holder(backend, ship, "7")
    with pytest.raises(Ignore):
        run_as_worker(ship, 7)
    assert ran == []
    [message] = published(app)
    assert message.headers["id"] == "tid-1"
    [conflict] = of(events, "lock_conflict")
    assert (conflict["action"], conflict["key"]) == ("defer", holder.key)
    assert conflict["retry_after"] == pytest.approx(60)
    # The holder renews its lease: come back within a quarter of the TTL, not at expiry.
    [deferred] = of(events, "task_deferred")
    assert deferred["delay"] == pytest.approx(15)
    assert backend.owner(holder.key) == "other-run"


def test_conflict_skip(app: Celery, backend: taskguard.MemoryBackend, events: list[Any]) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", on_conflict="skip")])
    def job(n: int) -> None:
        raise AssertionError("must not run")

    holder = other_holder(backend, job, "1")
    with pytest.raises(Ignore, match="skipped"):
        run_as_worker(job, 1)
    assert published(app) == []
    assert [c["action"] for c in of(events, "lock_conflict")] == ["skip"]
    assert of(events, "task_deferred") == []
    assert backend.owner(holder.key) == "other-run"


def test_conflict_fail(app: Celery, backend: taskguard.MemoryBackend, events: list[Any]) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", on_conflict="fail")])
    def job(n: int) -> None:
        raise AssertionError("must not run")

    holder = other_holder(backend, job, "1", ttl=40)
    with pytest.raises(LockHeld) as info:
        run_as_worker(job, 1)
    assert info.value.key == holder.key
    assert info.value.retry_after == pytest.approx(40)
    assert published(app) == []
    assert [c["action"] for c in of(events, "lock_conflict")] == ["fail"]
    assert backend.owner(holder.key) == "other-run"


def test_wait_in_worker_is_woken_by_release(app: Celery, backend: taskguard.MemoryBackend) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", wait=10)])
    def job(n: int) -> str:
        return "ran"

    holder = other_holder(backend, job, "1")
    timer = threading.Timer(0.2, backend.release, args=[[holder]])
    timer.start()
    started = time.monotonic()
    try:
        assert run_as_worker(job, 1) == "ran"
    finally:
        timer.join()
    assert time.monotonic() - started < 5  # the holder's TTL is 60 s, the wait 10 s
    assert published(app) == []


def test_wait_is_bounded_then_defers(app: Celery, backend: taskguard.MemoryBackend) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", wait=0.3)])
    def job(n: int) -> None:
        raise AssertionError("must not run")

    other_holder(backend, job, "1")
    started = time.monotonic()
    with pytest.raises(Ignore):
        run_as_worker(job, 1)
    assert time.monotonic() - started >= 0.25
    assert len(published(app)) == 1


def steal_during_run(app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock) -> Any:
    """A task whose lock expires mid-run and is taken by another owner."""

    @app.task(shared=False, base=GuardedTask, bind=True, guards=[Lock(key="{n}", ttl=10)])
    def job(self: Any, n: int) -> bool:
        heartbeat_for(backend).stop()  # the process stalls: no renewal...
        clock.advance(11)  # ...past the TTL
        other_holder(backend, self, str(n))
        heartbeat_for(backend).beat()  # the next round finds the lease gone
        return bool(self.request.taskguard.lease_lost)

    return job


def test_lease_lost_during_run_is_flagged_and_the_thief_kept(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock, events: list[Any]
) -> None:
    job = steal_during_run(app, backend, clock)
    assert run_as_worker(job, 1) is True
    key = backend.keys.lock(job.name, "1")
    lost = of(events, "lease_lost")
    assert lost
    assert all((e["task_id"], e["key"]) == ("tid-1", key) for e in lost)
    assert backend.owner(key) == "other-run"  # the late release did not free it


def test_one_loss_is_one_lease_lost_signal(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock, events: list[Any]
) -> None:
    job = steal_during_run(app, backend, clock)
    run_as_worker(job, 1)
    assert len(of(events, "lease_lost")) == 1


# ---------------------------------------------------------------- Redis outage


@pytest.fixture
def dead_app() -> Iterator[Celery]:
    with celery_app(taskguard.connect(DEAD_URL).backend) as app:
        yield app


def test_outage_defers_a_locked_task(dead_app: Celery, events: list[Any]) -> None:
    @dead_app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}")])
    def job(n: int) -> None:
        raise AssertionError("must not run without its lock")

    with pytest.raises(Ignore):
        run_as_worker(job, 1)
    [message] = published(dead_app)
    assert message.headers["id"] == "tid-1"
    [deferred] = of(events, "task_deferred")
    assert "backend unavailable" in deferred["reason"]
    assert of(events, "lock_conflict") == []  # nobody holds it: Redis is down


def test_outage_allow_runs_unlocked(dead_app: Celery) -> None:
    @dead_app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", on_outage="allow")])
    def job(n: int) -> str:
        return "ran"

    assert run_as_worker(job, 1) == "ran"


def test_outage_local_lock_with_allow_rate_limit_runs(dead_app: Celery) -> None:
    guards = [Lock(key="{n}", on_outage="local"), RateLimit("10/s", on_outage="allow")]

    @dead_app.task(shared=False, base=GuardedTask, guards=guards)
    def job(n: int) -> str:
        return "ran"

    assert run_as_worker(job, 1) == "ran"


def test_outage_local_lock_is_released_after_the_run(dead_app: Celery) -> None:
    @dead_app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", on_outage="local")])
    def job(n: int) -> str:
        return "ran"

    assert run_as_worker(job, 1) == "ran"
    local = local_backend(runtime_for(dead_app).backend)
    assert local.owner(local.keys.lock(job.name, "1")) is None
    assert run_as_worker(job, 1, task_id="tid-2") == "ran"  # the first run is over
