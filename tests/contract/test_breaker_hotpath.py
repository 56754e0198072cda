"""The hot-path breaker in one process, on real Redis: closed calls make no round trip on
the caller's thread, outcomes reach the shared window by flushes, trips reach other views
by pub/sub, open calls are refused locally, half-open goes exact."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import taskguard
from taskguard import Breaker, CircuitOpen
from taskguard.backend.redis import MESSAGE_TYPES
from taskguard.guards.breaker_hotpath import HotPathBreaker
from taskguard.testing import wait_until

from .harness import CLUSTER_TOO, REDIS_ONLY, Contract

pytestmark = CLUSTER_TOO

OPEN = 0.5
BOUND = 2.0  # generous: correctness, not speed


@pytest.fixture
def connect(contract: Contract) -> Iterator[Callable[[], taskguard.Backend]]:
    """Makes backends on the contract's Redis and prefix: each is one process's view."""
    made: list[taskguard.Backend] = []

    def make() -> taskguard.Backend:
        backend = taskguard.connect(contract.url, prefix=contract.prefix).backend
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def redis_client(contract: Contract) -> Any:
    """The contract's own client: under Cluster, the root fixture's server is not the one
    under test."""
    return contract.client


def hot(backend: taskguard.Backend, name: str = "svc", **options: Any) -> HotPathBreaker:
    options.setdefault("open_for", OPEN)
    breaker = taskguard.connect(backend).circuit_breaker(name, hot_path=True, **options)
    assert isinstance(breaker, HotPathBreaker)
    return breaker


def ok() -> str:
    return "ok"


def bad() -> str:
    raise ConnectionError("down")


def call(breaker: Breaker, func: Callable[[], str]) -> str:
    try:
        return breaker.call(func)
    except ConnectionError:
        return "failed"
    except CircuitOpen:
        return "refused"


def wait_for(predicate: Callable[[], bool], bound: float = BOUND) -> None:
    wait_until(predicate, timeout=bound, interval=0.005, message="not reached within the bound")


@REDIS_ONLY
def test_closed_calls_make_no_round_trip_on_the_callers_thread(
    connect: Callable[[], taskguard.Backend],
) -> None:
    backend = connect()
    breaker = hot(backend)
    breaker.call(ok)  # the first call refreshes the view: one round trip
    callers: list[str] = []
    real_run = backend._run  # type: ignore[attr-defined]

    def spy(*args: Any, **kwargs: Any) -> Any:
        callers.append(threading.current_thread().name)
        return real_run(*args, **kwargs)

    backend._run = spy  # type: ignore[attr-defined]
    for _ in range(2000):
        assert breaker.call(ok) == "ok"
    assert threading.current_thread().name not in callers
    breaker.flush()
    assert breaker.flushed_total == 2001


@REDIS_ONLY
def test_a_flush_waits_for_the_agents_flush_in_flight(
    connect: Callable[[], taskguard.Backend],
) -> None:
    # The agent's flush holds the counts it took until Redis answers; a flush() that did
    # not wait for it sent what was left and read a total without them (611 of 2001 in
    # one CI run of the test above).
    backend = connect()
    breaker = hot(backend)
    breaker.call(ok)
    in_flight, go_on = threading.Event(), threading.Event()
    overtaken: list[bool] = []
    real = backend.run_script  # type: ignore[attr-defined]

    def spy(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            overtaken.append(not go_on.is_set())  # sent while the agent's was held?
        elif not in_flight.is_set():
            in_flight.set()
            go_on.wait(10)
        return real(*args, **kwargs)

    backend.run_script = spy  # type: ignore[attr-defined]
    for _ in range(100):
        breaker.call(ok)
    assert in_flight.wait(10)  # the agent took some counts and waits on "Redis"
    releaser = threading.Timer(0.5, go_on.set)  # lets the agent finish if flush() waits
    releaser.start()
    try:
        breaker.flush()
    finally:
        go_on.set()
        releaser.cancel()
    assert overtaken == [False]
    assert breaker.flushed_total == 101


@REDIS_ONLY
def test_consecutive_failures_trip_at_the_next_flush_and_open_refuses_locally(
    connect: Callable[[], taskguard.Backend],
) -> None:
    breaker = hot(connect(), consecutive_failures=3, failure_rate=1.0, open_for=30)
    for _ in range(3):
        assert call(breaker, bad) == "failed"
    wait_for(lambda: breaker.local_state == "open")
    assert breaker.state == "open"  # the shared state, read from Redis
    ran: list[int] = []
    with pytest.raises(CircuitOpen) as info:
        breaker.call(lambda: ran.append(1))
    assert not ran
    assert 28 < info.value.retry_after <= 30


@REDIS_ONLY
def test_a_failure_rate_over_a_count_window_trips(
    connect: Callable[[], taskguard.Backend],
) -> None:
    breaker = hot(connect(), window=10, failure_rate=0.5, open_for=30)
    for func in [ok] * 5 + [bad] * 4:
        call(breaker, func)
    breaker.flush()
    assert breaker.local_state == "closed"  # 4 of 9
    call(breaker, bad)
    breaker.flush()
    assert breaker.local_state == "open"
    assert breaker.state == "open"


@REDIS_ONLY
def test_the_count_window_keeps_its_size_when_a_batch_is_larger(
    connect: Callable[[], taskguard.Backend], redis_client: redis.Redis
) -> None:
    breaker = hot(connect(), window=10, failure_rate=0.5, open_for=30)
    for func in [bad] * 30 + [ok] * 10:  # one batch: the window holds its last 10 calls
        call(breaker, func)
    breaker.flush()
    assert breaker.local_state == "closed"
    op = breaker.spec.call_op(breaker.backend.keys, "-")
    assert redis_client.llen(op.window_key) == 10
    calls, failures, flushed = redis_client.hmget(op.key, "wc", "wf", "flushed")
    assert (calls, failures or b"0", flushed) == (b"10", b"0", b"40")


@REDIS_ONLY
def test_a_time_window_counts_a_batch_in_its_flush_second(
    connect: Callable[[], taskguard.Backend],
) -> None:
    breaker = hot(
        connect(), window=5, window_type="time", minimum_calls=20, failure_rate=0.5, open_for=30
    )
    for func in [ok] * 10 + [bad] * 9:
        call(breaker, func)
    breaker.flush()
    assert breaker.local_state == "closed"  # 19 calls: below minimum_calls
    call(breaker, bad)
    breaker.flush()
    assert breaker.local_state == "open"  # 10 of 20


@REDIS_ONLY
def test_ignored_exceptions_count_for_nothing(connect: Callable[[], taskguard.Backend]) -> None:
    breaker = hot(connect(), consecutive_failures=2, ignore_exceptions=(KeyError,), open_for=30)

    def missing() -> str:
        raise KeyError("sku")

    call(breaker, bad)
    with pytest.raises(KeyError):
        breaker.call(missing)
    breaker.flush()
    assert breaker.flushed_total == 1
    call(breaker, bad)
    breaker.flush()
    assert breaker.local_state == "open"


@REDIS_ONLY
def test_a_trip_reaches_another_process_view_by_pubsub(
    connect: Callable[[], taskguard.Backend],
) -> None:
    tripper = hot(connect(), consecutive_failures=2, open_for=30)
    other = hot(connect(), consecutive_failures=2, open_for=30, flush_interval=1.0)
    assert other.call(ok) == "ok"
    assert tripper.call(ok) == "ok"
    # Through the backend's port: SSUBSCRIBE on the channel's node on Redis Cluster.
    backend = other.redis_backend
    pubsub = backend.pubsub(backend.breaker_channel())
    backend.subscribe(pubsub, backend.breaker_channel())
    call(tripper, bad)
    call(tripper, bad)
    wait_for(lambda: other.local_state == "open")
    messages = []
    # The port's pubsub skips confirmations (get_message gives None for one): read on
    # until nothing came for half a second.
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.5:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            messages.append(message)
            quiet_since = time.monotonic()
    pubsub.close()
    published = [m["data"].decode() for m in messages if m["type"] in MESSAGE_TYPES]
    assert [text.rsplit("|", 1)[0] for text in published] == ["svc|open"]
    assert 29_000 < int(published[0].rsplit("|", 1)[1]) <= 30_000


@REDIS_ONLY
def test_half_open_goes_exact_and_a_successful_probe_closes_every_view(
    connect: Callable[[], taskguard.Backend],
) -> None:
    first = hot(connect(), consecutive_failures=1)
    second = hot(connect(), consecutive_failures=1)
    assert second.call(ok) == "ok"
    call(first, bad)
    first.flush()
    wait_for(lambda: second.local_state == "open")
    wait_for(lambda: first.local_state == "half_open" == second.local_state, OPEN + BOUND)
    blocked = threading.Event()
    release = threading.Event()

    def probe() -> str:
        blocked.set()
        release.wait(5)
        return "ok"

    thread = threading.Thread(target=first.call, args=(probe,))
    thread.start()
    assert blocked.wait(5)
    assert call(second, ok) == "refused"  # the one probe permit is taken, fleet-wide
    release.set()
    thread.join(5)
    wait_for(lambda: first.local_state == "closed" and second.local_state == "closed")
    assert first.state == "closed"


@REDIS_ONLY
def test_counts_arriving_while_open_are_not_folded(
    connect: Callable[[], taskguard.Backend], redis_client: redis.Redis
) -> None:
    breaker = hot(connect(), window=10, failure_rate=0.5, open_for=30, flush_interval=1.0)
    # The process's flush agent must not fold the three calls while the breaker is still
    # closed: it flushes a breaker at its next tick, after (re)subscribing, and on every
    # refresh message, and on a busy machine even a second passes between two lines
    # here. So the agent never finds this breaker due: only the test flushes it.
    breaker.due = lambda now: False  # type: ignore[method-assign]
    for _ in range(3):
        call(breaker, ok)
    assert breaker.flushed_total == 0, "flushed before the test could open the breaker"
    Breaker(breaker.backend, breaker.spec).force_open()
    breaker.flush()
    assert breaker.flushed_total == 3
    op = breaker.spec.call_op(breaker.backend.keys, "-")
    assert redis_client.llen(op.window_key) == 0
    assert breaker.local_state == "forced_open"
    with pytest.raises(CircuitOpen):
        breaker.call(ok)


@REDIS_ONLY
def test_admin_controls_reach_other_views(connect: Callable[[], taskguard.Backend]) -> None:
    admin = hot(connect())
    user = hot(connect(), flush_interval=1.0)
    assert user.call(ok) == "ok"
    admin.disable()
    wait_for(lambda: user.local_state == "disabled")
    admin.force_open()
    wait_for(lambda: user.local_state == "forced_open")
    assert call(user, ok) == "refused"
    admin.force_close()
    wait_for(lambda: user.local_state == "closed")
    assert user.call(ok) == "ok"


@REDIS_ONLY
def test_an_exact_breakers_trip_reaches_the_view_by_refresh(
    connect: Callable[[], taskguard.Backend],
) -> None:
    backend = connect()
    user = hot(backend, consecutive_failures=1, open_for=30)
    assert user.call(ok) == "ok"
    exact = taskguard.connect(backend).circuit_breaker("svc", consecutive_failures=1, open_for=30)
    call(exact, bad)  # no publish: the view learns it from the next flush reply
    wait_for(lambda: user.local_state == "open")


def test_outage_policies_apply_when_the_view_is_stale(
    private_redis: Any,
) -> None:
    allow = taskguard.connect(private_redis.url, prefix="tgt-outage").backend
    deny = taskguard.connect(private_redis.url, prefix="tgt-outage").backend
    allowing = hot(allow, on_outage="allow")
    denying = hot(deny, on_outage="deny")
    assert allowing.call(ok) == "ok"
    assert denying.call(ok) == "ok"
    private_redis.stop()

    def refused() -> bool:
        # Until the view goes stale (stale_after without a refresh) calls stay local.
        try:
            denying.call(ok)
        except taskguard.BackendUnavailable:
            return True
        return False

    wait_for(refused, denying.stale_after + BOUND)
    assert allowing.call(ok) == "ok"
    with pytest.raises(taskguard.BackendUnavailable):
        denying.call(ok)
    allow.close()
    deny.close()
