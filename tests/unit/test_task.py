"""GuardedTask in one process: admission, deferral, release outcomes, caps.

The guard state is a MemoryBackend on a fake clock and the broker is kombu's in-memory
transport, so the re-published message can be read back and inspected. Cross-process
behaviour is proven in tests/integration with real workers and real Redis.
"""

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded

from taskguard import DeferralExhausted, GuardedTask, MemoryBackend, RateLimit, RateLimited, signals
from taskguard.celery._deferral import HEADER_COUNT, HEADER_RESERVATION, HEADER_SINCE, DeferralState
from taskguard.celery._runtime import runtime_for
from taskguard.clock import FakeClock

from .celery_harness import published


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Iterator[Celery]:
    app = Celery("unit", broker="memory://", set_as_current=False)
    # kombu's memory transport is process-wide: a queue per test keeps tests apart.
    app.conf.task_default_queue = f"unit-{uuid.uuid4().hex[:8]}"
    app.conf.taskguard = {"deferral_jitter": 0, "max_deferrals": 3}
    runtime_for(app).backend = MemoryBackend(clock=clock)
    yield app
    app.close()


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name in (
        "guard_acquired",
        "guard_denied",
        "guard_released",
        "task_deferred",
        "deferral_exhausted",
    ):

        def receiver(sender: Any = None, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, kwargs))

        receivers[name] = receiver
        getattr(signals, name).connect(receiver, weak=False)
    yield seen
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def run_as_worker(
    task: Any,
    *args: Any,
    headers: dict[str, Any] | None = None,
    task_id: str = "tid-1",
    retries: int = 0,
    **kwargs: Any,
) -> Any:
    """Call the task the way the worker's tracer does: request pushed, not called directly."""
    task.push_request(
        id=task_id,
        args=args,
        kwargs=kwargs,
        called_directly=False,
        is_eager=False,
        headers=headers,
        retries=retries,
        delivery_info={"exchange": "", "routing_key": task.app.conf.task_default_queue},
    )
    try:
        return task(*args, **kwargs)
    finally:
        task.pop_request()


def test_admitted_task_runs_and_releases(app: Celery, events: list[Any]) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/s", key="{x}")])
    def double(x: int) -> int:
        return 2 * x

    assert run_as_worker(double, 21) == 42
    assert [name for name, _ in events] == ["guard_acquired", "guard_released"]
    assert events[1][1]["outcome"] == "success"


def test_denied_task_is_republished_with_same_id_and_merged_headers(
    app: Celery, events: list[Any], clock: FakeClock
) -> None:
    @app.task(shared=False, base=GuardedTask, bind=True, guards=[RateLimit("2/s")])
    def work(self: Any) -> str:
        return "ran"

    assert run_as_worker(work) == "ran"
    with pytest.raises(Ignore):
        run_as_worker(work, task_id="tid-2", headers={"sentry-trace": "abc-1"})
    [message] = published(app)
    headers = message.headers
    assert headers["id"] == "tid-2"
    assert headers["retries"] == 0
    assert headers["sentry-trace"] == "abc-1"  # merged, not replaced
    assert headers[HEADER_COUNT] == 1
    assert headers[HEADER_SINCE] == pytest.approx(time.time(), abs=5)
    reservation = headers[HEADER_RESERVATION]
    assert reservation["keys"] == [runtime_for(app).backend.keys.rate_limit(work.name)]
    assert reservation["retries"] == 0
    assert reservation["slot"] == pytest.approx(time.time() + 0.5, abs=1)
    assert headers["eta"] is not None
    deferred = next(kw for name, kw in events if name == "task_deferred")
    assert deferred["delay"] == pytest.approx(0.5)
    assert deferred["reserved"] is True
    assert "guard_released" not in [name for name, _ in events[2:]]  # never admitted

    # The slot at +0.5 s belongs to tid-2: a newcomer then is refused, while tid-2's
    # message runs without contesting again.
    clock.advance(0.5)
    with pytest.raises(Ignore):
        run_as_worker(work, task_id="tid-3")
    assert run_as_worker(work, task_id="tid-2", headers=headers) == "ran"


def test_deferral_without_reservation_adds_jitter_and_caps_delay(
    app: Celery, events: list[Any]
) -> None:
    app.conf.taskguard = {"reserve_within": 0, "deferral_jitter": 0.25, "max_deferral_delay": 2}
    runtime_for(app).reload()

    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/m")])
    def slow() -> None: ...

    run_as_worker(slow)
    with pytest.raises(Ignore):
        run_as_worker(slow)
    deferred = next(kw for name, kw in events if name == "task_deferred")
    assert 2.0 <= deferred["delay"] <= 2.25
    assert deferred["reserved"] is False
    [message] = published(app)
    assert message.headers[HEADER_RESERVATION] is None


@pytest.mark.parametrize("policy", ["fail", "drop", "dead_letter"])
def test_deferral_cap_policies(app: Celery, events: list[Any], policy: str) -> None:
    app.conf.taskguard = {"max_deferrals": 2, "on_deferral_exhausted": policy}
    runtime_for(app).reload()

    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/h", name=f"cap-{policy}")])
    def capped() -> None: ...

    run_as_worker(capped)
    headers = {HEADER_COUNT: 2, HEADER_SINCE: time.time()}
    expected = DeferralExhausted if policy == "fail" else Ignore
    with pytest.raises(expected):
        run_as_worker(capped, headers=headers)
    [exhausted] = [kw for n, kw in events if n == "deferral_exhausted"]
    assert exhausted["deferrals"] == 2
    assert exhausted["policy"] == policy
    assert published(app) == []
    if policy == "dead_letter":
        [message] = published(app, "taskguard.dead_letter")
        assert message.headers["id"] == "tid-1"


def test_deferral_age_cap(app: Celery) -> None:
    app.conf.taskguard = {"max_deferral_age": 10}
    runtime_for(app).reload()

    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/h")])
    def old() -> None: ...

    run_as_worker(old)
    long_ago = time.time() - 60
    with pytest.raises(DeferralExhausted, match="deferred 1 times") as info:
        run_as_worker(old, headers={HEADER_COUNT: 1, HEADER_SINCE: long_ago})
    assert info.value.age >= 60


@pytest.mark.parametrize(
    ("raised", "outcome"),
    [
        (Retry("again", None), "retry"),
        (Ignore(), "ignored"),
        (Reject("bad", requeue=False), "rejected"),
        (SoftTimeLimitExceeded(), "soft_time_limit"),
        (ValueError("boom"), "failure"),
        (KeyboardInterrupt(), "aborted"),
    ],
)
def test_release_runs_on_every_outcome(
    app: Celery, events: list[Any], raised: BaseException, outcome: str
) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("100/s")])
    def fails() -> None:
        raise raised

    with pytest.raises(type(raised)):
        run_as_worker(fails)
    released = [kw for name, kw in events if name == "guard_released"]
    assert [r["outcome"] for r in released] == [outcome]
    assert released[0]["duration"] >= 0


def test_direct_call_and_disabled_tasks_are_unguarded(app: Celery, events: list[Any]) -> None:
    app.conf.taskguard = {"tasks": {"*off": {"enabled": False}}}
    runtime_for(app).reload()

    @app.task(shared=False, base=GuardedTask, name="t.on", guards=[RateLimit("1/h")])
    def on() -> str:
        return "on"

    @app.task(shared=False, base=GuardedTask, name="t.off", guards=[RateLimit("1/h")])
    def off() -> str:
        return "off"

    assert [on(), on()] == ["on", "on"]  # called directly: a plain function call
    assert [run_as_worker(off), run_as_worker(off)] == ["off", "off"]
    assert events == []


def test_eager_denial_raises(app: Celery) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/h")])
    def eager() -> str:
        return "ok"

    assert eager.apply().get() == "ok"
    result = eager.apply()
    assert result.failed()
    assert isinstance(result.result, RateLimited)
    assert result.result.retry_after > 3500


def test_malformed_deferral_headers_start_fresh(caplog: pytest.LogCaptureFixture) -> None:
    state = DeferralState.from_headers({HEADER_COUNT: "many"})
    assert state == DeferralState()
    assert "malformed" in caplog.text
    assert DeferralState.from_headers(None) == DeferralState()


def reserved_headers(app: Celery, task: Any, *, slot: float, retries: int = 0) -> dict[str, Any]:
    key = runtime_for(app).backend.keys.rate_limit(task.name)
    reservation = {"keys": [key], "slot": slot, "retries": retries}
    return {HEADER_COUNT: 1, HEADER_SINCE: time.time(), HEADER_RESERVATION: reservation}


def test_reservation_is_not_reused_by_a_retry(app: Celery) -> None:
    """self.retry() copies headers; the reservation belongs to one run only."""

    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/h")])
    def once() -> str:
        return "ran"

    assert run_as_worker(once) == "ran"
    headers = reserved_headers(app, once, slot=time.time())
    assert run_as_worker(once, headers=headers) == "ran"  # the run it was made for
    with pytest.raises(Ignore):
        run_as_worker(once, headers=headers, retries=1)  # a retry contests again


def test_late_reservation_contests_again(app: Celery) -> None:
    app.conf.taskguard = {"reservation_grace": 0.05}
    runtime_for(app).reload()

    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("10/s")])
    def fast() -> str:
        return "ran"

    assert run_as_worker(fast) == "ran"
    on_time = reserved_headers(app, fast, slot=time.time() - 0.01)
    assert run_as_worker(fast, headers=on_time) == "ran"
    # Grace is max(half the 0.1 s interval, 0.05 s): 0.2 s late is too late.
    too_late = reserved_headers(app, fast, slot=time.time() - 0.2)
    with pytest.raises(Ignore):
        run_as_worker(fast, headers=too_late)


def test_dead_letter_starts_afresh(app: Celery) -> None:
    app.conf.taskguard = {"max_deferrals": 1, "on_deferral_exhausted": "dead_letter"}
    runtime_for(app).reload()

    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/h")])
    def dl() -> None: ...

    run_as_worker(dl)
    headers = {**reserved_headers(app, dl, slot=0.0), "sentry-trace": "t-1"}
    with pytest.raises(Ignore):
        run_as_worker(dl, headers=headers)
    [message] = published(app, "taskguard.dead_letter")
    assert message.headers["sentry-trace"] == "t-1"
    for header in (HEADER_COUNT, HEADER_SINCE, HEADER_RESERVATION):
        assert header not in message.headers
