"""(c) Standalone limiter decisions per second from one client, one call at a time.

Every variant runs in this process, on the same throwaway Redis, with redis-py (and its
hiredis parser) underneath:

* ``PING``: one round trip and nothing else, the ceiling for any one-call limiter;
* ``admit.lua`` sent by bare redis-py: taskguard's exact EVALSHA (captured from a real
  ``try_acquire``) through ``Redis.evalsha``, with none of taskguard's Python around it;
* the same EVALSHA through taskguard's lane (``taskguard/backend/lane.py``, the client under
  every guard call): with the row above, it splits the gap to ``PING`` into server-side
  Lua time, the client's Python and taskguard's own Python;
* taskguard's ``rate_limiter("b", "1000000/s", burst=1000000).try_acquire()``;
* the ``limits`` package on ``RedisStorage``: fixed window (its fastest), sliding window
  counter and moving window.

The limits are far above what one client reaches, so every decision is "allowed".

On a small shared machine, back-to-back loops of one variant at a time drift with
whatever else runs (slices of the same variant varied 2x here). So the variants take
turns call by call, each call timed, and a variant's rate is one over its median call
time: every variant sees the same background, and a preempted call does not count more
than any other. The run is split in ``reps`` parts to show how stable the ratios are.

Then, per variant, the server counts the round trips and the commands scripts run (with
MONITOR) and their server time (without it); see :mod:`benchmarks.servercount`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import fmean
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

from .harness import (
    BenchResult,
    Context,
    Goal,
    Row,
    calls_per_second,
    interleaved_call_times,
    median,
)
from .lanecall import lane_evalsha
from .servercount import Counted, counting, server_usec_per_call

NAME = "decisions"
TITLE = "standalone limiter decisions/s from one client vs PING and limits"

RATE = "1000000/s"
BURST = 1_000_000
#: taskguard's GCRA decision against limits' fastest strategy (issue 15), same run.
GOAL = 1.0

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


def _captured_admit(url: str, namespace: str) -> tuple[Any, ...]:
    """The EVALSHA arguments of a real ``try_acquire``, the script loaded on the server."""
    _taskguard_limiter(url, namespace).try_acquire()  # loads the script on the server
    recorder = _RecordingClient()
    _taskguard_limiter(url, namespace, client=recorder).try_acquire()
    return recorder.evalsha_args


def _bare_admit(url: str, namespace: str) -> Call:
    return functools.partial(redis.Redis.from_url(url).evalsha, *_captured_admit(url, namespace))


def _lane_admit(url: str, namespace: str) -> Call:
    return functools.partial(lane_evalsha(url), *_captured_admit(url, namespace))


def _limits(strategy: type[RateLimiter]) -> Callable[[str, str], Call]:
    def make(url: str, namespace: str) -> Call:
        limiter = strategy(RedisStorage(url, key_prefix=namespace))
        return functools.partial(limiter.hit, parse("1000000/second"), "b")

    return make


PING = Variant("redis-py PING (1 round trip)", _ping)
BARE_ADMIT = Variant("admit.lua via bare redis-py evalsha", _bare_admit)
LANE_ADMIT = Variant("admit.lua via taskguard's lane, bare", _lane_admit)
TASKGUARD = Variant("taskguard try_acquire()", _taskguard)
FIXED_WINDOW = Variant("limits FixedWindow (RedisStorage)", _limits(FixedWindowRateLimiter))
VARIANTS = (
    PING,
    BARE_ADMIT,
    LANE_ADMIT,
    TASKGUARD,
    FIXED_WINDOW,
    Variant("limits SlidingWindowCounter", _limits(SlidingWindowCounterRateLimiter)),
    Variant("limits MovingWindow", _limits(MovingWindowRateLimiter)),
)


def python_cost_us(seconds: float) -> float:
    """Microseconds of taskguard's own Python per ``try_acquire()``, client stubbed out.

    Everything stays hot in the CPU caches here, so this is a lower bound: between real
    round trips the same code runs colder (compare ``try_acquire`` with bare ``evalsha``).
    """
    limiter = _taskguard_limiter("redis://127.0.0.1:1/0", "nio", client=_RecordingClient())
    return 1e6 / calls_per_second(limiter.try_acquire, seconds)


def _check_not_degraded(call: Call) -> None:
    decision = call()
    if getattr(decision, "degraded", False):
        raise RuntimeError(
            "taskguard answered from its outage policy instead of Redis; see its log "
            "('taskguard backend unavailable ...') for the error"
        )


@dataclass(frozen=True)
class Timing:
    """One variant's call times over one part of the run, in microseconds."""

    median_us: float
    mean_us: float
    calls: int

    @classmethod
    def of(cls, nanoseconds: Sequence[float]) -> Timing:
        return cls(median(nanoseconds) / 1000, fmean(nanoseconds) / 1000, len(nanoseconds))


def run(context: Context) -> BenchResult:
    reps, seconds = (1, 1.0) if context.quick else (3, 8.0)
    url = context.server.url
    calls = [v.make(url, context.unique(f"{NAME}-{i}")) for i, v in enumerate(VARIANTS)]
    for call in calls:  # warm-up: connections, script loads
        calls_per_second(call, 0.05)
    _check_not_degraded(calls[VARIANTS.index(TASKGUARD)])

    timings = [
        [Timing.of(ns) for ns in interleaved_call_times(calls, seconds)] for _ in range(reps)
    ]
    _check_not_degraded(calls[VARIANTS.index(TASKGUARD)])
    # Over all parts: the median of medians is robust and keeps each part's weight equal.
    median_us = [median([rep[i].median_us for rep in timings]) for i in range(len(VARIANTS))]
    ratios = [
        [rep[0].median_us / rep[i].median_us for rep in timings] for i in range(len(VARIANTS))
    ]

    sample = 200 if context.quick else 2000
    counts: list[Counted] = []
    server_us: list[float] = []
    for call in calls:
        with counting(url) as counted:
            for _ in range(sample):
                call()
        counts.append(counted)
        command = counted.sent.most_common(1)[0][0]
        server_us.append(server_usec_per_call(url, call, sample, command))

    rows = []
    for i, variant in enumerate(VARIANTS):
        spread = f"{min(ratios[i]):.3f}-{max(ratios[i]):.3f}"
        note = "" if variant is PING else f"{median(ratios[i]):.3f}x PING (parts {spread}); "
        note += f"{median_us[i]:.1f} µs/call; {counts[i].describe(sample)}; "
        note += f"{server_us[i]:.1f} µs in Redis"
        rows.append(Row(variant.label, 1e6 / median_us[i], "calls/s", note))
    bare, lane = VARIANTS.index(BARE_ADMIT), VARIANTS.index(LANE_ADMIT)
    ours = VARIANTS.index(TASKGUARD)
    python_us = python_cost_us(0.2 if context.quick else 1.0)
    rows.append(
        Row(
            "taskguard Python per decision",
            median_us[ours] - median_us[lane],
            "µs",
            f"try_acquire minus its EVALSHA through the bare lane; {python_us:.1f} µs with "
            "the client stubbed out",
        )
    )
    rows.append(
        Row(
            "redis-py Redis.evalsha Python per call",
            median_us[bare] - median_us[lane],
            "µs",
            "the same EVALSHA through redis-py's evalsha minus through taskguard's lane",
        )
    )
    fixed = VARIANTS.index(FIXED_WINDOW)
    # Per part, taskguard's rate / limits FixedWindow's (both timed in the same interleave).
    to_limits = [rep[fixed].median_us / rep[ours].median_us for rep in timings]
    limits_ratio = median(to_limits)
    rows.append(
        Row(
            "taskguard ÷ limits FixedWindow",
            limits_ratio,
            "x",
            f"parts {min(to_limits):.3f}-{max(to_limits):.3f}; "
            f"taskguard {median(ratios[ours]):.3f}x PING",
            decimals=3,
        )
    )
    goal = Goal(
        f"taskguard GCRA ≥ {GOAL:g} x limits FixedWindow", limits_ratio >= GOAL, limits_ratio
    )
    details = {
        "reps": reps,
        "seconds_per_rep": seconds,
        "timings": {v.label: [asdict(rep[i]) for rep in timings] for i, v in enumerate(VARIANTS)},
        "ratio_to_ping": {v.label: ratios[i] for i, v in enumerate(VARIANTS)},
        "round_trips_per_decision": {
            v.label: counts[i].round_trips / sample for i, v in enumerate(VARIANTS)
        },
        "commands_per_decision": {
            v.label: counts[i].describe(sample) for i, v in enumerate(VARIANTS)
        },
        "server_us_per_decision": {v.label: server_us[i] for i, v in enumerate(VARIANTS)},
        "taskguard_python_us_stubbed": python_us,
        "taskguard_to_limits_fixed_window": to_limits,
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
