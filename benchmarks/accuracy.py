"""(a) Global rate accuracy: does ``RateLimit("20/s")`` hold at 20/s across a fleet?

Three ``celery worker`` processes (prefork, ``-c 2`` each, so six pool processes) consume
one queue holding more ``bench.guarded_rate`` tasks than the window can run. Each task
records its start with Redis ``TIME``, so every start is on one clock. The achieved rate
is the number of starts in the ``duration`` seconds after the first one, divided by
``duration``.

Then three fresh workers run ``bench.celery_rate``, limited by Celery's own
``rate_limit="20/s"``. Each worker enforces that on its own, so up to 3 x 20/s may run;
the table shows the mean over the window and the busiest second.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

from taskguard.testing import worker_fleet

from .celeryrun import (
    APP,
    Start,
    client_app,
    publish,
    read_starts,
    redis_time,
    wait_for_starts,
    worker_options,
)
from .harness import BenchResult, Context, Goal, Row, median

NAME = "accuracy"
TITLE = 'fleet-wide rate of RateLimit("20/s") on 3 workers x prefork -c2'

WORKERS = 3
CONCURRENCY = 2
RATE = "20/s"
TARGET = 20.0
TOLERANCE = 0.02
#: Queued tasks as a multiple of what the window can run: the queue never runs dry.
OFFERED_LOAD = 1.3
#: Starts are recorded a few milliseconds after they happen; wait this long past the window.
GRACE = 1.0


@dataclass(frozen=True)
class Phase:
    """The starts of one limiter over the measured window."""

    label: str
    duration: float
    starts: list[Start]

    @property
    def rate(self) -> float:
        return len(self.starts) / self.duration

    def steady_rate(self, skip: float) -> float:
        """The rate after the first ``skip`` seconds of the window."""
        begin = self.starts[0].at + skip
        return sum(1 for start in self.starts if start.at >= begin) / (self.duration - skip)

    @property
    def error(self) -> float:
        """Relative error against the configured 20/s."""
        return self.rate / TARGET - 1.0

    def peak_per_second(self) -> int:
        """The most starts in any one-second span."""
        times = [start.at for start in self.starts]
        peak, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= 1.0:
                first += 1
            peak = max(peak, last - first + 1)
        return peak

    def per_second(self) -> list[int]:
        """Starts in each whole second of the window."""
        counts = [0] * math.ceil(self.duration)
        for start in self.starts:
            counts[int(start.at - self.starts[0].at)] += 1
        return counts

    def gaps_ms(self) -> list[float]:
        times = [start.at for start in self.starts]
        return [(b - a) * 1000 for a, b in itertools.pairwise(times)]

    def summary(self) -> dict[str, object]:
        gaps = self.gaps_ms()
        return {
            "duration_s": self.duration,
            "starts": len(self.starts),
            "rate_per_s": self.rate,
            "error_vs_20_per_s": self.error,
            "peak_starts_in_1s": self.peak_per_second(),
            "deferred_before_start": sum(1 for start in self.starts if start.deferrals),
            "gap_ms_min": min(gaps, default=0.0),
            "gap_ms_median": median(gaps) if gaps else 0.0,
            "gap_ms_max": max(gaps, default=0.0),
            "starts_per_second": self.per_second(),
            "start_offsets_ms": [round((s.at - self.starts[0].at) * 1000, 1) for s in self.starts],
        }


def _measure(
    context: Context, label: str, task_name: str, expected: float, duration: float
) -> Phase:
    """Run ``task_name`` on a fresh fleet; return the starts of the first ``duration`` s."""
    queue = context.unique(f"{NAME}-{label}")
    key = context.unique(f"{NAME}-{label}-starts")
    offered = math.ceil(expected * duration * OFFERED_LOAD) + 2 * WORKERS * CONCURRENCY
    client = context.client()
    app = client_app(context.server.url)
    options = worker_options(context.server.url, prefix=context.unique(NAME), rate=RATE)
    try:
        with worker_fleet(APP, WORKERS, concurrency=CONCURRENCY, queues=[queue], **options):
            publish(app, task_name, offered, queue, args=(key,))
            wait_for_starts(client, key, 1)
            window_end = read_starts(client, key)[0].at + duration
            while redis_time(client) < window_end + GRACE:
                time.sleep(0.1)
            starts = read_starts(client, key)
    finally:
        client.delete(queue, key)
        app.close()
    window = [start for start in starts if start.at < starts[0].at + duration]
    return Phase(label, duration, window)


def run(context: Context) -> BenchResult:
    duration = 5.0 if context.quick else 30.0
    guarded = _measure(context, "taskguard", "bench.guarded_rate", TARGET, duration)
    builtin = _measure(context, "celery", "bench.celery_rate", TARGET * WORKERS, duration)
    skip = min(5.0, duration / 2)  # past the start-up transient, for the analysis
    rows = [
        Row(
            f'taskguard RateLimit("{RATE}"), {WORKERS} workers',
            guarded.rate,
            "tasks/s",
            f"{guarded.error:+.2%} vs 20/s; {len(guarded.starts)} starts in {duration:.0f} s; "
            f"peak {guarded.peak_per_second()} in any 1 s; "
            f"longest gap {max(guarded.gaps_ms(), default=0):.0f} ms",
        ),
        Row(
            f"  same, after the first {skip:g} s",
            guarded.steady_rate(skip),
            "tasks/s",
            f"{guarded.steady_rate(skip) / TARGET - 1:+.2%}; first seconds: "
            + " ".join(map(str, guarded.per_second()[:6])),
        ),
        Row(
            f'celery rate_limit="{RATE}", {WORKERS} workers',
            builtin.rate,
            "tasks/s",
            f"mean over {duration:.0f} s, {builtin.rate / TARGET:.2f}x the configured rate; "
            f"peak {builtin.peak_per_second()} in any 1 s; "
            f"per second: {' '.join(map(str, builtin.per_second()[:6]))} ...",
        ),
    ]
    goal = Goal(
        f"within ±{TOLERANCE:.0%} of {TARGET:.0f}/s",
        abs(guarded.error) <= TOLERANCE,
        guarded.rate,
    )
    details = {
        "taskguard": {**guarded.summary(), f"rate_after_{skip:g}s": guarded.steady_rate(skip)},
        "celery": {**builtin.summary(), f"rate_after_{skip:g}s": builtin.steady_rate(skip)},
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
