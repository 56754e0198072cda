"""Acquire+release pairs per second from one client, for the lock and semaphore benchmarks.

A *pair* is one uncontended acquire followed by its release: what a caller pays for
``with lock:`` around nothing. Every variant (taskguard, its peers, reference floors) is a
zero-argument call doing one pair, built in this process on the same throwaway Redis, with
redis-py and hiredis underneath.

As in :mod:`benchmarks.decisions`, the variants take turns pair by pair, each pair timed,
and a variant's rate is one over its median pair time, so every variant sees the same
background on this shared machine; the run is split in parts to show how stable the ratios
are. A variant that disturbs its neighbours (one that starts threads on every call) can be
timed in a separate interleave with the reference alone (``isolated``). Then, per variant,
the server counts round trips and the commands scripts ran
(MONITOR) and the server time (``INFO commandstats``, without MONITOR); see
:mod:`benchmarks.servercount`. A ``MULTI`` ... ``EXEC`` transaction counts as one round
trip, as redis-py sends it in one write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

import taskguard

from .decisions import Timing
from .harness import Context, calls_per_second, interleaved_call_times, median
from .lanecall import lane_evalsha
from .servercount import Counted, counting, server_usec_sent

__all__ = [
    "Call",
    "Measured",
    "Variant",
    "bare_evalsha_pair",
    "measure",
    "ping_pair",
]

Call = Callable[[], object]


@dataclass(frozen=True)
class Variant:
    """One way of doing an acquire+release pair.

    Attributes:
        label: Shown in the table.
        make: Builds the zero-argument pair from the server URL and a key namespace.
    """

    label: str
    make: Callable[[str, str], Call]


@dataclass
class Measured:
    """What :func:`measure` found, per variant in the order given."""

    variants: Sequence[Variant]
    median_us: list[float]
    ratios: list[list[float]]  # per variant: its rate / the reference's, per part
    timings: list[list[Timing]]  # per part, per variant
    counts: list[Counted]
    server_us: list[float]
    sample: int
    reps: int
    seconds: float
    isolated: Sequence[Variant] = ()

    def index(self, variant: Variant) -> int:
        return list(self.variants).index(variant)

    def rate(self, variant: Variant) -> float:
        return 1e6 / self.median_us[self.index(variant)]

    def ratio(self, variant: Variant) -> float:
        """Median over the parts of this variant's rate / the reference's."""
        return median(self.ratios[self.index(variant)])

    def spread(self, variant: Variant) -> str:
        ratios = self.ratios[self.index(variant)]
        return f"{min(ratios):.3f}-{max(ratios):.3f}"

    def round_trips(self, variant: Variant) -> float:
        return self.counts[self.index(variant)].round_trips / self.sample

    def commands(self, variant: Variant) -> str:
        return self.counts[self.index(variant)].describe(self.sample)

    def details(self) -> dict[str, Any]:
        labels = [v.label for v in self.variants]
        return {
            "reps": self.reps,
            "seconds_per_rep": self.seconds,
            "timed_apart_with_the_reference": [v.label for v in self.isolated],
            "median_us_per_pair": dict(zip(labels, self.median_us, strict=True)),
            "timings": {
                label: [asdict(rep[i]) for rep in self.timings] for i, label in enumerate(labels)
            },
            "ratio_to_reference": dict(zip(labels, self.ratios, strict=True)),
            "round_trips_per_pair": {
                label: self.counts[i].round_trips / self.sample for i, label in enumerate(labels)
            },
            "commands_per_pair": {
                label: self.counts[i].describe(self.sample) for i, label in enumerate(labels)
            },
            "server_us_per_pair": dict(zip(labels, self.server_us, strict=True)),
        }


def measure(
    context: Context,
    name: str,
    variants: Sequence[Variant],
    reference: Variant,
    isolated: Sequence[Variant] = (),
) -> Measured:
    """Time every variant's pairs, interleaved; then count each one on the server.

    Each of ``isolated`` is timed in its own interleave with ``reference`` (half as long),
    and its ratio is to the reference's time in that interleave.
    """
    reps, seconds = (1, 1.0) if context.quick else (3, 6.0)
    url = context.server.url
    everything = [*variants, *isolated]
    calls = [v.make(url, context.unique(f"{name}-{i}")) for i, v in enumerate(everything)]
    for call in calls:  # warm-up: connections, script loads, heartbeat threads
        calls_per_second(call, 0.05, batch=10)
    main = calls[: len(variants)]
    ref = list(variants).index(reference)
    timings = [[Timing.of(ns) for ns in interleaved_call_times(main, seconds)] for _ in range(reps)]
    ratios = [
        [rep[ref].median_us / rep[i].median_us for rep in timings] for i in range(len(variants))
    ]
    for call in calls[len(variants) :]:
        apart = [
            [Timing.of(ns) for ns in interleaved_call_times([main[ref], call], seconds / 2)]
            for _ in range(reps)
        ]
        for rep, (_, timing) in zip(timings, apart, strict=True):
            rep.append(timing)
        ratios.append([r.median_us / t.median_us for r, t in apart])
    median_us = [median([rep[i].median_us for rep in timings]) for i in range(len(everything))]
    sample = 200 if context.quick else 2000
    counts: list[Counted] = []
    server_us: list[float] = []
    for call in calls:
        with counting(url) as counted:
            for _ in range(sample):
                call()
        counts.append(counted)
        server_us.append(server_usec_sent(url, call, sample, counted))
    return Measured(
        everything,
        median_us,
        ratios,
        timings,
        counts,
        server_us,
        sample,
        reps,
        seconds,
        tuple(isolated),
    )


def ping_pair(url: str, namespace: str) -> Call:
    """Two ``PING``: the floor for any pair that takes two round trips."""
    client = redis.Redis.from_url(url)

    def pair() -> None:
        client.ping()
        client.ping()

    return pair


class _Recorder:
    """Stands in for a redis-py client: keeps each EVALSHA, answers from a script."""

    def __init__(self, replies: Sequence[Any]) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._replies = list(replies)

    def evalsha(self, *args: Any) -> Any:
        self.calls.append(args)
        return self._replies.pop(0)


def bare_evalsha_pair(
    url: str,
    namespace: str,
    build: Callable[[taskguard.Backend], Callable[[], Any]],
    replies: Sequence[Any],
) -> Call:
    """taskguard's exact two EVALSHAs of a pair, sent through taskguard's lane
    (``taskguard/backend/lane.py``) with no guard Python around them: splits taskguard's
    time into server side, the client underneath, and taskguard's own Python.

    Args:
        build: From a backend, the taskguard pair to capture (run once for real first,
            which also loads the scripts, then once against a recording client).
        replies: What the recording client answers, in call order (acquire, release).
    """
    build(taskguard.connect(url, prefix=namespace))()
    recorder = _Recorder(replies)
    build(taskguard.connect(url, prefix=namespace, client=recorder))()
    acquire_args, release_args = recorder.calls
    evalsha = lane_evalsha(url)

    def pair() -> None:
        if not evalsha(*acquire_args)[0]:
            raise RuntimeError("bare admission was denied: the pair is not uncontended")
        evalsha(*release_args)

    return pair
