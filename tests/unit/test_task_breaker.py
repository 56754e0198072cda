"""GuardedTask with a circuit breaker, in one process.

Guard state is a MemoryBackend on a fake clock and the broker is kombu's memory transport,
so a deferred task's message can be read back. Tasks and a standalone Breaker built from
the same spec share the breaker's state, as two workers would.
"""

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded

import taskguard
import taskguard.celery
from taskguard import Breaker, CircuitBreaker, CircuitOpen, GuardedTask, Lock
from taskguard.celery._deferral import HEADER_COUNT
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for

from .celery_harness import DEAD_URL, celery_app, of, published, recorded, run_as_worker

NAMES = itertools.count()
SIGNALS = ("circuit_state_changed", "task_deferred", "guard_denied", "guard_released")


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    with recorded(*SIGNALS) as seen:
        yield seen


def failing_task(app: Celery, spec: CircuitBreaker, raised: BaseException | None = None) -> Any:
    """A task guarded by ``spec`` that raises ``raised`` (None: returns "ok")."""

    @app.task(shared=False, base=GuardedTask, guards=[spec], name=f"partner-{next(NAMES)}")
    def call_partner() -> str:
        if raised is not None:
            raise raised
        return "ok"

    return call_partner


def runs(task: Any, count: int, prefix: str = "t") -> None:
    for n in range(count):
        with contextlib.suppress(Exception):  # the task's failure: what the breaker counts
            run_as_worker(task, task_id=f"{prefix}{n}")


def test_an_open_breaker_defers_the_task_until_the_next_probe(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock, events: list[Any]
) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1, open_for=30)
    ran = []

    @app.task(shared=False, base=GuardedTask, guards=[spec])
    def call_partner(n: int) -> None:
        ran.append(n)

    runs(failing_task(app, spec, ValueError("502")), 1)  # trips the shared breaker
    clock.advance(10)
    with pytest.raises(Ignore):
        run_as_worker(call_partner, 1, task_id="tid-9")
    assert ran == []
    [message] = published(app)
    assert (message.headers["id"], message.headers["retries"]) == ("tid-9", 0)
    assert message.headers[HEADER_COUNT] == 1
    [deferred] = of(events, "task_deferred")
    assert deferred["delay"] == pytest.approx(20)  # 30 s open, 10 s already passed
    [denied] = of(events, "guard_denied")
    assert (denied["guard"], denied["retry_after"]) == (spec, pytest.approx(20))
    clock.advance(20)
    run_as_worker(call_partner, 1, task_id="tid-9")  # the probe runs, and closes it
    assert ran == [1]
    assert Breaker(backend, spec).state == "closed"


def test_deferral_adds_jitter(app: Celery, backend: taskguard.MemoryBackend) -> None:
    app.conf.taskguard = {"deferral_jitter": 0.5}
    taskguard.celery.runtime_for(app).reload()
    spec = CircuitBreaker("partner", open_for=12)
    Breaker(backend, spec).force_open()
    with recorded("task_deferred") as seen, pytest.raises(Ignore):
        run_as_worker(failing_task(app, spec))
    [deferred] = of(seen, "task_deferred")
    assert 12 <= deferred["delay"] <= 12.5


def test_on_open_fail_raises_circuit_open(app: Celery, backend: taskguard.MemoryBackend) -> None:
    spec = CircuitBreaker("partner", open_for=30, on_open="fail")
    Breaker(backend, spec).force_open()
    with pytest.raises(CircuitOpen) as info:
        run_as_worker(failing_task(app, spec))
    assert (info.value.key, info.value.retry_after) == ("partner", pytest.approx(30))
    assert published(app) == []


def test_an_eager_call_of_an_open_breaker_raises(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    spec = CircuitBreaker("partner", open_for=30)
    Breaker(backend, spec).force_open()
    result = failing_task(app, spec).apply()
    assert isinstance(result.result, CircuitOpen)


def test_task_failures_trip_it_after_n_and_signal_who_did(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=3, open_for=30)
    task = failing_task(app, spec, ConnectionError("refused"))
    runs(task, 2)
    assert Breaker(backend, spec).state == "closed"
    assert of(events, "circuit_state_changed") == []
    runs(task, 1, prefix="third")
    assert Breaker(backend, spec).state == "open"
    [changed] = of(events, "circuit_state_changed")
    assert changed == {
        "signal": changed["signal"],
        "name": "partner",
        "old": "closed",
        "new": "open",
        "reason": "failure or slow-call threshold reached",
        "task_id": "third0",
    }


def test_half_open_transitions_are_signalled_with_the_probe_task(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock, events: list[Any]
) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1, open_for=5)
    runs(failing_task(app, spec, ValueError()), 1)
    clock.advance(5)
    assert run_as_worker(failing_task(app, spec), task_id="probe-1") == "ok"
    changes = [(c["old"], c["new"], c["task_id"]) for c in of(events, "circuit_state_changed")]
    assert changes == [
        ("closed", "open", "t0"),
        ("open", "half_open", "probe-1"),
        ("half_open", "closed", "probe-1"),
    ]
    assert of(events, "circuit_state_changed")[1]["reason"] == "open_for elapsed"


@pytest.mark.parametrize("raised", [Ignore(), Reject("bad", requeue=False)])
def test_ignore_and_reject_count_for_nothing(
    app: Celery, backend: taskguard.MemoryBackend, raised: Exception
) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=2)
    runs(failing_task(app, spec, ValueError()), 1)
    runs(failing_task(app, spec, raised), 3)  # neither failures nor successes
    assert Breaker(backend, spec).state == "closed"
    runs(failing_task(app, spec, ValueError()), 1)
    assert Breaker(backend, spec).state == "open"


def test_a_soft_time_limit_is_a_failure(app: Celery, backend: taskguard.MemoryBackend) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1)
    runs(failing_task(app, spec, SoftTimeLimitExceeded()), 1)
    assert Breaker(backend, spec).state == "open"


def test_retry_counts_the_wrapped_exception(app: Celery, backend: taskguard.MemoryBackend) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1, record_exceptions=ConnectionError)
    raised: list[BaseException] = [ValueError("bad input"), ConnectionError("refused")]

    @app.task(shared=False, base=GuardedTask, bind=True, guards=[spec])
    def call_partner(self: Any) -> None:
        raise self.retry(exc=raised.pop(0), countdown=1)

    with pytest.raises(Retry):
        run_as_worker(call_partner)
    assert Breaker(backend, spec).state == "closed"  # ValueError is not recorded
    with pytest.raises(Retry):
        run_as_worker(call_partner)
    assert Breaker(backend, spec).state == "open"
    assert len(published(app)) == 2  # the retries themselves went out as usual


def test_a_bare_retry_is_not_a_failure(app: Celery, backend: taskguard.MemoryBackend) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1)

    @app.task(shared=False, base=GuardedTask, bind=True, guards=[spec])
    def poll(self: Any) -> None:
        raise self.retry(countdown=5)  # "not ready yet": nothing failed downstream

    with pytest.raises(Retry):
        run_as_worker(poll)
    assert Breaker(backend, spec).state == "closed"


def test_a_probe_run_renews_its_probe_lease(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock
) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1, open_for=5, probe_ttl=10)
    other = Breaker(backend, spec)
    runs(failing_task(app, spec, ValueError()), 1)
    clock.advance(5)
    seen = []

    @app.task(shared=False, base=GuardedTask, guards=[spec])
    def slow_probe() -> None:
        seen.append(len(heartbeat_for(backend)))
        for _ in range(3):  # 24 s in all, well past the 10 s probe lease
            clock.advance(8)
            heartbeat_for(backend).beat()
        refused = other.try_acquire()  # the one permit is still this run's
        seen.append((refused.allowed, refused.retry_after <= 1))

    run_as_worker(slow_probe)
    assert seen == [1, (False, True)]
    assert len(heartbeat_for(backend)) == 0
    assert other.state == "closed"


def test_a_lock_refusal_does_not_spend_the_probe(
    app: Celery, backend: taskguard.MemoryBackend, clock: FakeClock
) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1, open_for=5)
    runs(failing_task(app, spec, ValueError()), 1)
    clock.advance(5)

    @app.task(shared=False, base=GuardedTask, guards=[spec, Lock()])
    def locked() -> None: ...

    lock = backend.keys.lock(locked.name)
    assert backend.admit([taskguard.backend.ops.LeaseOp(lock, owner="x", ttl=60)]).allowed
    with pytest.raises(Ignore):
        run_as_worker(locked)
    assert Breaker(backend, spec).try_acquire().lease.probe  # type: ignore[union-attr]


def test_redis_down_lets_the_task_run_by_default() -> None:
    backend = taskguard.connect(DEAD_URL).backend
    with celery_app(backend) as app:
        spec = CircuitBreaker("partner", consecutive_failures=1)
        assert run_as_worker(failing_task(app, spec)) == "ok"
        with pytest.raises(ValueError, match="boom"):
            run_as_worker(failing_task(app, spec, ValueError("boom")))  # release fails quietly
    backend.close()


def test_local_outage_policy_trips_a_breaker_in_this_process() -> None:
    backend = taskguard.connect(DEAD_URL).backend
    with celery_app(backend) as app:
        spec = CircuitBreaker("partner", consecutive_failures=1, on_outage="local")
        task = failing_task(app, spec, ValueError("boom"))
        with pytest.raises(ValueError, match="boom"):
            run_as_worker(task)  # admitted and recorded by the process-local breaker
        with pytest.raises(Ignore):
            run_as_worker(task, task_id="tid-2")  # which is open now: deferred
        [message] = published(app)
        assert message.headers["id"] == "tid-2"
    backend.close()
