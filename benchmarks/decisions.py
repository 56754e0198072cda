"""(c) Standalone limiter decisions per second from one client, one call at a time.

Every variant runs in this process, on the same throwaway Redis, with redis-py (and its
hiredis parser) underneath:

* ``PING``: one round trip and nothing else, the ceiling for any one-call limiter;
* ``admit.lua`` sent by bare redis-py: taskguard's exact EVALSHA (captured from a real
  ``try_acquire``) with none of taskguard's Python around it, which splits the gap to
  ``PING`` into server-side Lua time and client-side Python time;
* taskguard's ``rate_limiter("b", "1000000/s", burst=1000000).try_acquire()``;
* the ``limits`` package on ``RedisStorage``: fixed window (its fastest), sliding window
  counter and moving window.

The limits are far above what one client reaches, so every decision is "allowed".
Variants take turns in short slices, round after round, so a background blip hits them
all; each ratio is taken within a round against that round's ``PING``, then the median
over rounds is reported. A last pass counts, on the server, the round trips each variant
makes per decision and the commands its scripts run (see :mod:`benchmarks.servercount`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

import taskguard

from .harness import BenchResult, Context, Goal, Row, calls_per_second, median
from .servercount import Counted, counting, server_usec_per_call

NAME = "decisions"
TITLE = "standalone limiter decisions/s from one client vs PING and limits"

RATE = "1000000/s"
BURST = 1_000_000
GOAL = 0.95

Call = Callable[[], object]


@dataclass(frozen=True)
class Variant:
    """One way of asking Redis for a decision.

    Attributes:
        label: Shown in the table.
        make: Builds the zero-argument call from the server URL and a key namespace.
    """

    label: str
    make: Callable[[str, str], Call]


class _RecordingClient:
    """Stands in for a redis-py client and keeps the EVALSHA it is asked to send."""

    def __init__(self) -> None:
        self.evalsha_args: tuple[Any, ...] = ()

    def evalsha(self, *args: Any) -> list[int]:
        self.evalsha_args = args
        return [1, 0, 0, 0, BURST - 1]  # allowed, as admit.lua would answer


def _ping(url: str, namespace: str) -> Call:
    return redis.Redis.from_url(url).ping


def _taskguard_limiter(url: str, namespace: str, **options: Any) -> taskguard.RateLimiter:
    return taskguard.connect(url, prefix=namespace, **options).rate_limiter("b", RATE, burst=BURST)


def _taskguard(url: str, namespace: str) -> Call:
    return _taskguard_limiter(url, namespace).try_acquire


def _bare_admit(url: str, namespace: str) -> Call:
    _taskguard_limiter(url, namespace).try_acquire()  # loads the script on the server
    recorder = _RecordingClient()
    _taskguard_limiter(url, namespace, client=recorder).try_acquire()
    return functools.partial(redis.Redis.from_url(url).evalsha, *recorder.evalsha_args)


def _limits(strategy: type[RateLimiter]) -> Callable[[str, str], Call]:
    def make(url: str, namespace: str) -> Call:
        limiter = strategy(RedisStorage(url, key_prefix=namespace))
        return functools.partial(limiter.hit, parse("1000000/second"), "b")

    return make


PING = Variant("redis-py PING (1 round trip)", _ping)
TASKGUARD = Variant("taskguard try_acquire()", _taskguard)
VARIANTS = (
    PING,
    Variant("admit.lua via bare redis-py evalsha", _bare_admit),
    TASKGUARD,
    Variant("limits FixedWindow (RedisStorage)", _limits(FixedWindowRateLimiter)),
    Variant("limits SlidingWindowCounter", _limits(SlidingWindowCounterRateLimiter)),
    Variant("limits MovingWindow", _limits(MovingWindowRateLimiter)),
)


def python_cost_us(seconds: float) -> float:
    """Microseconds of taskguard's own Python per ``try_acquire()``, with no I/O at all."""
    limiter = _taskguard_limiter("redis://127.0.0.1:1/0", "nio", client=_RecordingClient())
    return 1e6 / calls_per_second(limiter.try_acquire, seconds)


def run(context: Context) -> BenchResult:
    rounds, slice_seconds = (2, 0.2) if context.quick else (12, 0.5)
    url = context.redis.url
    calls = {v: v.make(url, context.unique(f"{NAME}-{i}")) for i, v in enumerate(VARIANTS)}
    for call in calls.values():  # warm-up: connections, script loads
        calls_per_second(call, 0.05)

    rates: dict[Variant, list[float]] = {v: [] for v in VARIANTS}
    for index in range(rounds):
        shift = index % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            rates[variant].append(calls_per_second(calls[variant], slice_seconds))
    ratios = {v: [r / p for r, p in zip(rates[v], rates[PING], strict=True)] for v in VARIANTS}

    sample = 200 if context.quick else 2000
    counts: dict[Variant, Counted] = {}
    server_us: dict[Variant, float] = {}
    for variant in VARIANTS:
        with counting(url) as counted:
            for _ in range(sample):
                calls[variant]()
        counts[variant] = counted
        command = counted.sent.most_common(1)[0][0]
        server_us[variant] = server_usec_per_call(url, calls[variant], sample, command)

    rows = []
    for variant in VARIANTS:
        ratio = median(ratios[variant])
        spread = f"{min(ratios[variant]):.2f}-{max(ratios[variant]):.2f}"
        note = "" if variant is PING else f"{ratio:.3f}x PING (rounds {spread}); "
        note += f"{counts[variant].describe(sample)}; {server_us[variant]:.1f} µs in Redis"
        rows.append(Row(variant.label, median(rates[variant]), "calls/s", note))
    python_us = python_cost_us(0.2 if context.quick else 1.0)
    rows.append(Row("taskguard Python per decision, no I/O", python_us, "µs", "client stubbed out"))
    taskguard_ratio = median(ratios[TASKGUARD])
    goal = Goal(f"taskguard ≥ {GOAL} x PING", taskguard_ratio >= GOAL, taskguard_ratio)
    details = {
        "rounds": rounds,
        "slice_seconds": slice_seconds,
        "calls_per_s": {v.label: rates[v] for v in VARIANTS},
        "ratio_to_ping": {v.label: ratios[v] for v in VARIANTS},
        "round_trips_per_decision": {v.label: counts[v].round_trips / sample for v in VARIANTS},
        "commands_per_decision": {v.label: counts[v].describe(sample) for v in VARIANTS},
        "server_us_per_decision": {v.label: server_us[v] for v in VARIANTS},
        "taskguard_python_us_per_decision": python_us,
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
