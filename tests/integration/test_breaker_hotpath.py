"""The hot-path breaker across real processes on real Redis: a trip made by one process's
flushed failures reaches every process, counts are conserved, the agent survives a Redis
restart, and a forked child starts its own agent."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any

import pytest
import redis

import taskguard
from taskguard import CircuitOpen
from taskguard.guards.breaker_hotpath import HotPathBreaker
from taskguard.testing import RedisServer, wait_until

BOUND = 2.0  # generous: correctness, not speed
PROCESSES = 3
OPTIONS: dict[str, Any] = {"consecutive_failures": 20, "failure_rate": 1.0, "open_for": 60}
CALLS_BEFORE = 200  # calls each process makes, closed, before the partner fails
REFUSED_AFTER = 500  # calls each process has refused, open, before the test stops it


def _worker(url: str, prefix: str, index: int, events: tuple[Event, Event], out: Any) -> None:
    fail, stop = events
    backend = taskguard.connect(url, prefix=prefix).backend
    breaker = taskguard.connect(backend).circuit_breaker("partner", hot_path=True, **OPTIONS)
    runs = 0
    opened_at: float | None = None
    runs_after_open = 0

    def partner() -> None:
        nonlocal runs, runs_after_open
        runs += 1
        if opened_at is not None:
            runs_after_open += 1
        if index == 0 and fail.is_set():
            raise ConnectionError("partner down")

    out.put(("ready", index))
    refused = 0
    calling = False
    while not stop.is_set():
        try:
            breaker.call(partner)
        except ConnectionError:
            pass
        except CircuitOpen:
            if opened_at is None:
                opened_at = time.time()
            refused += 1
            if refused == REFUSED_AFTER:
                out.put(("refused", index))
        if not calling and runs >= CALLS_BEFORE and breaker.flushed_total > 0:
            calling = True
            out.put(("calling", index))
        time.sleep(0.001)  # a steady caller, about a thousand calls a second at most
    breaker.flush()
    out.put(("done", index, runs, opened_at, runs_after_open))


class Mailbox:
    """What the processes said, by kind: ``wait(kind)`` returns once all of them said it."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.said: dict[str, dict[int, tuple[Any, ...]]] = {}

    def wait(self, kind: str, timeout: float) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        while len(self.said.get(kind, {})) < PROCESSES:
            # A message of a later kind from a fast process may come first: keep it.
            message = self.out.get(timeout=max(deadline - time.monotonic(), 0.001))
            self.said.setdefault(message[0], {})[message[1]] = message
        return list(self.said[kind].values())


def test_a_trip_reaches_every_process_and_counts_are_conserved(
    redis_url: str, tg_prefix: str, redis_client: redis.Redis
) -> None:
    ctx = multiprocessing.get_context("spawn")
    fail, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(redis_url, tg_prefix, i, (fail, stop), out))
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    mailbox = Mailbox(out)
    try:
        mailbox.wait("ready", timeout=60)
        mailbox.wait("calling", timeout=30)  # every process calls, closed, and has flushed
        failing_from = time.time()
        fail.set()
        # Every process sees the trip, then keeps calling (refused) for a while.
        mailbox.wait("refused", timeout=BOUND + 30)
        stop.set()
        results = mailbox.wait("done", timeout=30)
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs)
    state_key = taskguard.connect(redis_url, prefix=tg_prefix).keys.breaker("partner")
    assert redis_client.hget(state_key, "state") == b"open"
    for _, index, runs, opened_at, runs_after_open in results:
        assert runs > 100, f"process {index} barely ran"
        assert opened_at is not None, f"process {index} never saw the breaker open"
        assert opened_at - failing_from < BOUND, f"process {index} saw it late"
        assert runs_after_open == 0, f"process {index} called the partner while open"
    flushed = int(redis_client.hget(state_key, "flushed") or 0)
    assert flushed == sum(runs for _, _, runs, _, _ in results)


def _wait_for(predicate: Callable[[], bool], bound: float = BOUND) -> None:
    wait_until(predicate, timeout=bound, message="not reached within the bound")


def _ok() -> None:
    return None


def _bad() -> None:
    raise ConnectionError("partner down")


def test_the_agent_survives_a_redis_restart(private_redis: RedisServer) -> None:
    first = taskguard.connect(private_redis.url, prefix="tgt-restart").backend
    second = taskguard.connect(private_redis.url, prefix="tgt-restart").backend
    tripper = taskguard.connect(first).circuit_breaker(
        "partner", hot_path=True, consecutive_failures=5, open_for=60
    )
    watcher = taskguard.connect(second).circuit_breaker(
        "partner", hot_path=True, consecutive_failures=5, open_for=60
    )
    assert isinstance(tripper, HotPathBreaker)
    assert isinstance(watcher, HotPathBreaker)
    tripper.call(_ok)
    watcher.call(_ok)
    tripper.flush()  # the server forgets these: it has no persistence
    watcher.flush()
    private_redis.stop()
    for _ in range(50):  # within the view's freshness: hot, counted, kept for later
        tripper.call(_ok)
    time.sleep(0.3)  # the outage lasts a moment: the agent's flushes fail meanwhile
    private_redis.restart()  # no persistence: an empty server

    def flushed() -> bool:
        try:
            tripper.flush()
        except taskguard.BackendUnavailable:
            return False
        return tripper.flushed_total >= 50

    _wait_for(flushed, bound=5.0)
    assert tripper.flushed_total == 50  # the outage's calls, kept and flushed once
    _wait_for(lambda: watcher.local_state == "closed")
    watcher.call(_ok)
    for _ in range(5):
        with pytest.raises(ConnectionError):
            tripper.call(_bad)
    _wait_for(lambda: watcher.local_state == "open")
    with pytest.raises(CircuitOpen):
        watcher.call(_ok)
    first.close()
    second.close()


def _forked_child(breaker: HotPathBreaker, out: Any) -> None:
    for _ in range(50):
        breaker.call(_ok)
    for _ in range(5):
        with contextlib.suppress(ConnectionError):
            breaker.call(_bad)
    breaker.flush()
    out.put(breaker.local_state)


def test_a_forked_child_flushes_through_its_own_agent(redis_url: str, tg_prefix: str) -> None:
    backend = taskguard.connect(redis_url, prefix=tg_prefix).backend
    breaker = taskguard.connect(backend).circuit_breaker(
        "partner", hot_path=True, consecutive_failures=5, failure_rate=1.0, open_for=60
    )
    assert isinstance(breaker, HotPathBreaker)
    for _ in range(100):
        breaker.call(_ok)
    breaker.flush()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_forked_child, args=(breaker, out))
    child.start()
    assert out.get(timeout=30) == "open"
    child.join(30)
    assert child.exitcode == 0
    _wait_for(lambda: breaker.local_state == "open")
    breaker.flush()
    assert breaker.flushed_total == 155
    backend.close()
