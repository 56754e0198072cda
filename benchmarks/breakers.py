"""(i) Circuit breaker: protected calls per second in the closed state, and how fast a trip
reaches every process in hot-path mode.

**Calls per second.** One client, a breaker around a function that returns at once, closed
throughout, on the same throwaway Redis. The variants take turns call by call, each call
timed (as in :mod:`benchmarks.pairs`), and a variant's rate is one over its median call:

* two ``PING``: the floor for any breaker that takes 2 round trips per call;
* pybreaker's ``CircuitBreaker`` with ``CircuitRedisStorage``: the reference;
* taskguard's exact ``Breaker.call`` (an admission and a release EVALSHA per call);
* taskguard's hot-path ``Breaker.call`` (``hot_path=True``, ``flush_interval=0.05``):
  decided from the process's view, outcomes flushed by a background thread.

Round trips per call are counted by the server afterwards: per call for the one-at-a-time
variants, and over a second of back-to-back calls for the hot path (its round trips are
the flushes, whatever the number of calls).

**Trip propagation.** Four spawned processes call a hot-path breaker in a loop (one call
per millisecond). The parent records one failure on the same breaker
(``consecutive_failures=1``): its next flush trips it and publishes the new state. Each
process notes when its own view first refuses a call (``time.time()``: one clock on one
host). Per trial: from the failing call, and from the tripping flush (the trip's time in
Redis, ``until - open_for``), to the last of the four processes to refuse. Then
``force_close()`` and the next trial.

**As a task guard** the breaker's check and outcome ride in the task's admission and
release calls; see docs/performance.md, "Circuit breaker", for how that is counted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pybreaker
import redis

import taskguard
from taskguard import CircuitOpen
from taskguard.guards.breaker_hotpath import HotPathBreaker

from .decisions import Timing
from .harness import BenchResult, Context, Goal, Row, calls_per_second, interleaved_call_times
from .harness import median as median_of
from .servercount import counting

NAME = "breakers"
TITLE = "circuit breaker calls/s (closed) vs pybreaker; hot-path trip propagation"

GOAL_RATIO = 3.0
#: The exact mode (two round trips, like pybreaker's) against pybreaker, same run.
GOAL_EXACT_RATIO = 1.0
GOAL_PROPAGATION_MS = 250.0
FLUSH_INTERVAL = 0.05
WATCHERS = 4
BREAKER = "bench-breaker"
LABELS = ("2 x PING", "pybreaker CircuitRedisStorage", "taskguard exact", "taskguard hot path")

Call = Callable[[], object]


def _noop() -> None:
    return None


def _fail() -> None:
    raise ConnectionError("partner down")


def _ping(url: str, namespace: str) -> Call:
    client = redis.Redis.from_url(url)

    def pair() -> None:
        client.ping()
        client.ping()

    return pair


def _pybreaker(url: str, namespace: str) -> Call:
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, redis.Redis.from_url(url), namespace=namespace
    )
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)
    return functools.partial(breaker.call, _noop)


def _taskguard(hot_path: bool) -> Callable[[str, str], Call]:
    def make(url: str, namespace: str) -> Call:
        backend = taskguard.connect(url, prefix=namespace).backend
        breaker = taskguard.connect(backend).circuit_breaker(
            BREAKER, hot_path=hot_path, flush_interval=FLUSH_INTERVAL, open_for=30
        )
        return functools.partial(breaker.call, _noop)

    return make


MAKERS = (_ping, _pybreaker, _taskguard(False), _taskguard(True))


def _check_recorded(url: str, namespace: str, hot: Call) -> None:
    """Guard against a false win: the hot path's outcomes really reached Redis."""
    breaker = hot.func.__self__  # type: ignore[attr-defined]
    assert isinstance(breaker, HotPathBreaker)
    breaker.flush()
    if breaker.flushed_total <= 0 or breaker.local_state != "closed":
        raise RuntimeError(f"{breaker!r} recorded nothing: is its Redis reachable?")


def _calls_per_second(context: Context) -> tuple[list[Row], Goal, dict[str, Any]]:
    reps, seconds = (1, 1.0) if context.quick else (3, 6.0)
    url = context.server.url
    namespaces = [context.unique(f"{NAME}-{i}") for i in range(len(MAKERS))]
    calls = [make(url, ns) for make, ns in zip(MAKERS, namespaces, strict=True)]
    for call in calls:  # warm-up: connections, script loads, the agent thread
        calls_per_second(call, 0.1, batch=10)
    timings = [
        [Timing.of(ns) for ns in interleaved_call_times(calls, seconds)] for _ in range(reps)
    ]
    _check_recorded(url, namespaces[3], calls[3])
    median_us = [median_of([rep[i].median_us for rep in timings]) for i in range(len(calls))]
    ratios = [[rep[1].median_us / rep[i].median_us for rep in timings] for i in range(len(calls))]
    # Round trips: the hot path's agent goes idle a second after its last call, so the
    # one-at-a-time variants are counted after that, and the hot path last.
    time.sleep(1.5)
    sample = 200 if context.quick else 2000
    round_trips: list[float] = []
    for call in calls[:3]:
        with counting(url) as counted:
            for _ in range(sample):
                call()
        round_trips.append(counted.round_trips / sample)
    hot_seconds = 0.5 if context.quick else 2.0
    with counting(url) as counted:
        started = time.perf_counter()
        hot_calls = 0
        while time.perf_counter() - started < hot_seconds:
            for _ in range(100):
                calls[3]()
            hot_calls += 100
        elapsed = time.perf_counter() - started
    round_trips.append(counted.round_trips / hot_calls)
    flushes_per_second = counted.round_trips / elapsed
    rates = [1e6 / us for us in median_us]
    rows = []
    for i, label in enumerate(LABELS):
        spread = f"{min(ratios[i]):.2f}-{max(ratios[i]):.2f}"
        note = f"{ratios[i] and median_of(ratios[i]):.2f} x pybreaker (parts {spread}), "
        note += f"{round_trips[i]:.4g} round trips/call"
        rows.append(Row(label, rates[i], "calls/s", note))
    hot_ratio = median_of(ratios[3])
    exact_ratio = median_of(ratios[2])
    rows.append(
        Row("hot path: flush round trips per second", flushes_per_second, "rt/s", "all calls")
    )
    goal = Goal(
        f"exact >= {GOAL_EXACT_RATIO:g} x pybreaker; hot path >= {GOAL_RATIO:g} x pybreaker",
        exact_ratio >= GOAL_EXACT_RATIO and hot_ratio >= GOAL_RATIO,
        exact_ratio,
    )
    details = {
        "reps": reps,
        "seconds_per_rep": seconds,
        "median_us_per_call": dict(zip(LABELS, median_us, strict=True)),
        "ratio_to_pybreaker": dict(zip(LABELS, ratios, strict=True)),
        "round_trips_per_call": dict(zip(LABELS, round_trips, strict=True)),
        "hot_path_round_trips_per_second": flushes_per_second,
        "timings": {label: [asdict(rep[i]) for rep in timings] for i, label in enumerate(LABELS)},
    }
    return rows, goal, details


def _watcher(url: str, prefix: str, index: int, out: Any, stop: Any) -> None:
    """A process calling the breaker every millisecond; reports each change of its view."""
    backend = taskguard.connect(url, prefix=prefix).backend
    breaker = taskguard.connect(backend).circuit_breaker(
        BREAKER, hot_path=True, flush_interval=FLUSH_INTERVAL, **_TRIP_OPTIONS
    )
    last = ""
    while not stop.is_set():
        try:
            breaker.call(_noop)
            state = "closed"
        except CircuitOpen:
            state = "open"
        if state != last:
            out.put((index, state, time.time()))
            last = state
        time.sleep(0.001)
    backend.close()


_TRIP_OPTIONS: dict[str, Any] = {"consecutive_failures": 1, "failure_rate": 1.0, "open_for": 60}


def _await_states(
    out: Any, state: str, seen: dict[int, tuple[str, float]], timeout: float = 10.0
) -> list[float]:
    """Wait until every watcher's last reported state is ``state``; their times."""
    deadline = time.monotonic() + timeout
    while not all(seen.get(i, ("", 0.0))[0] == state for i in range(WATCHERS)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(
                f"watchers did not all report {state!r} within {timeout:g} s: {seen}"
            )
        index, reported, at = out.get(timeout=left)
        seen[index] = (reported, at)
    return [seen[i][1] for i in range(WATCHERS)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _propagation(context: Context) -> tuple[list[Row], Goal, dict[str, Any]]:
    trials = 5 if context.quick else 40
    url = context.server.url
    prefix = context.unique(f"{NAME}-trip")
    backend = taskguard.connect(url, prefix=prefix).backend
    tripper = taskguard.connect(backend).circuit_breaker(
        BREAKER, hot_path=True, flush_interval=FLUSH_INTERVAL, **_TRIP_OPTIONS
    )
    state_key = backend.keys.breaker(BREAKER)
    client = redis.Redis.from_url(url)
    ctx = multiprocessing.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_watcher, args=(url, prefix, i, out, stop)) for i in range(WATCHERS)
    ]
    for proc in procs:
        proc.start()
    from_failure: list[float] = []
    from_flush: list[float] = []
    breaker_log = logging.getLogger("taskguard.breaker")
    level = breaker_log.level
    breaker_log.setLevel(logging.ERROR)  # one "closed -> open" warning per trial otherwise
    seen: dict[int, tuple[str, float]] = {}
    try:
        # Spawning four interpreters takes seconds on a busy 2-core machine.
        _await_states(out, "closed", seen, timeout=120.0)
        for _ in range(trials):
            # A random phase against the 50 ms flush period: the failure waits 0 to one
            # interval for its flush.
            time.sleep(0.2 + random.uniform(0, FLUSH_INTERVAL))
            failed_at = time.time()
            with contextlib.suppress(ConnectionError):
                tripper.call(_fail)
            opened = _await_states(out, "open", seen)
            (until_ms,) = client.hmget(state_key, "until")
            tripped_at = int(until_ms or 0) / 1000 - _TRIP_OPTIONS["open_for"]
            from_failure.append((max(opened) - failed_at) * 1000)
            from_flush.append((max(opened) - tripped_at) * 1000)
            tripper.force_close()
            _await_states(out, "closed", seen)
    finally:
        breaker_log.setLevel(level)
        stop.set()
        for proc in procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
        client.close()
        backend.close()
    p50_failure, p99_failure = _percentile(from_failure, 0.5), _percentile(from_failure, 0.99)
    p50_flush, p99_flush = _percentile(from_flush, 0.5), _percentile(from_flush, 0.99)
    rows = [
        Row(
            f"trip, failing call -> all {WATCHERS} refuse: p50",
            p50_failure,
            "ms",
            f"p99 {p99_failure:.1f} ms, max {max(from_failure):.1f} ms, {trials} trials",
            decimals=1,
        ),
        Row(
            "trip, tripping flush -> all refuse: p50",
            p50_flush,
            "ms",
            f"p99 {p99_flush:.1f} ms, max {max(from_flush):.1f} ms",
            decimals=1,
        ),
    ]
    goal = Goal(
        f"trip reaches every process, p99 <= {GOAL_PROPAGATION_MS:g} ms from the failing call",
        p99_failure <= GOAL_PROPAGATION_MS,
        p99_failure,
    )
    details = {
        "watchers": WATCHERS,
        "flush_interval_s": FLUSH_INTERVAL,
        "trials": trials,
        "from_failing_call_ms": from_failure,
        "from_tripping_flush_ms": from_flush,
        "mean_from_failing_call_ms": statistics.fmean(from_failure),
    }
    return rows, goal, details


def run(context: Context) -> BenchResult:
    rate_rows, rate_goal, rate_details = _calls_per_second(context)
    trip_rows, trip_goal, trip_details = _propagation(context)
    both = rate_goal.met and trip_goal.met
    goal = Goal(
        f"{rate_goal.description}; {trip_goal.description}",
        both,
        rate_goal.measured,
    )
    return BenchResult(
        NAME,
        TITLE,
        [*rate_rows, *trip_rows],
        goal,
        {"calls_per_second": rate_details, "propagation": trip_details},
    )
