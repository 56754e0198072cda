"""(a) Global rate accuracy: does ``RateLimit("20/s")`` hold at 20/s across a fleet?

Three ``celery worker`` processes (prefork, ``-c 2`` each, so six pool processes) consume
one queue of ``bench.guarded_rate`` tasks. Each task records its start with Redis
``TIME``, so every start is on one clock. The achieved rate is the number of starts in the
``duration`` seconds after the first one, divided by ``duration``. Two load shapes:

* **steady offer** (the goal is judged on this one): a producer thread publishes at twice
  the limit, 40 tasks/s evenly spaced, from before the first start until the window is
  over, as a busy system offers work;
* **burst**: more tasks than the window can run (1.3x) are queued at once before the
  workers start taking them: a sudden backlog, whose start-up transient is analysed in
  docs/performance.md.

Then fresh workers run ``bench.celery_rate`` under both shapes, limited by Celery's own
``rate_limit="20/s"``. Each worker enforces that on its own, so up to 3 x 20/s may run;
the table shows the mean over the window and the busiest second.
"""

from __future__ import annotations

import itertools
import math
import threading
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
#: Burst shape: queued tasks as a multiple of what the window can run (never runs dry).
OFFERED_LOAD = 1.3
#: Steady shape: tasks published per second, evenly spaced, all through the window.
OFFER_RATE = 2 * TARGET
STEADY, BURST = "steady", "burst"
#: Starts are recorded a few milliseconds after they happen; wait this long past the window.
GRACE = 1.0


@dataclass(frozen=True)
class Phase:
    """The starts of one limiter over the measured window."""

    label: str
    duration: float
    starts: list[Start]
    shape: str = BURST
    offered: int = 0
    offered_seconds: float = 0.0

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
            "shape": self.shape,
            "offered": self.offered,
            "offered_per_s": self.offered / self.offered_seconds if self.offered_seconds else None,
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


class _Producer(threading.Thread):
    """Publishes ``task_name`` at ``rate`` per second, evenly spaced, until stopped."""

    def __init__(self, broker_url: str, task_name: str, queue: str, key: str, rate: float):
        super().__init__(name="tgbench-producer", daemon=True)
        self.app = client_app(broker_url)
        self.task_name, self.queue, self.key = task_name, queue, key
        self.interval = 1.0 / rate
        self.stopping = threading.Event()
        self.published = 0
        self.seconds = 0.0

    def run(self) -> None:
        with self.app.producer_or_acquire() as producer:
            started = due = time.monotonic()
            while not self.stopping.is_set():
                self.app.send_task(
                    self.task_name, args=(self.key,), queue=self.queue, producer=producer
                )
                self.published += 1
                due += self.interval
                self.stopping.wait(max(due - time.monotonic(), 0.0))
            self.seconds = time.monotonic() - started

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.app.close()


def _measure(
    context: Context, label: str, task_name: str, expected: float, duration: float, *, shape: str
) -> Phase:
    """Run ``task_name`` on a fresh fleet; return the starts of the first ``duration`` s."""
    queue = context.unique(f"{NAME}-{label}-{shape}")
    key = context.unique(f"{NAME}-{label}-{shape}-starts")
    client = context.client()
    app = client_app(context.server.url)
    options = worker_options(context.server.url, prefix=context.unique(NAME), rate=RATE)
    producer = None
    offered = 0
    try:
        with worker_fleet(APP, WORKERS, concurrency=CONCURRENCY, queues=[queue], **options):
            if shape == BURST:
                offered = math.ceil(expected * duration * OFFERED_LOAD) + 2 * WORKERS * CONCURRENCY
                publish(app, task_name, offered, queue, args=(key,))
            else:
                producer = _Producer(context.server.url, task_name, queue, key, OFFER_RATE)
                producer.start()
            wait_for_starts(client, key, 1)
            window_end = read_starts(client, key)[0].at + duration
            while redis_time(client) < window_end + GRACE:
                time.sleep(0.1)
            if producer is not None:
                producer.stop()
                offered = producer.published
            starts = read_starts(client, key)
    finally:
        if producer is not None and producer.is_alive():
            producer.stop()
        client.delete(queue, key)
        app.close()
    window = [start for start in starts if start.at < starts[0].at + duration]
    seconds = producer.seconds if producer is not None else 0.0
    return Phase(label, duration, window, shape, offered, seconds)


def _celery_row(phase: Phase, what: str) -> Row:
    return Row(
        f"celery rate_limit {RATE}, {what}",
        phase.rate,
        "tasks/s",
        f"{phase.rate / TARGET:.2f}x the configured rate; "
        f"peak {phase.peak_per_second()} in any 1 s; "
        f"per second: {' '.join(map(str, phase.per_second()[:8]))} ...",
    )


def run(context: Context) -> BenchResult:
    duration = 5.0 if context.quick else 30.0
    steady = _measure(context, "taskguard", "bench.guarded_rate", TARGET, duration, shape=STEADY)
    burst = _measure(context, "taskguard", "bench.guarded_rate", TARGET, duration, shape=BURST)
    builtin_steady = _measure(
        context, "celery", "bench.celery_rate", TARGET * WORKERS, duration, shape=STEADY
    )
    builtin = _measure(
        context, "celery", "bench.celery_rate", TARGET * WORKERS, duration, shape=BURST
    )
    skip = min(5.0, duration / 2)  # past the start-up transient, for the analysis
    offered_rate = steady.offered / steady.offered_seconds if steady.offered_seconds else 0.0
    rows = [
        Row(
            f"taskguard {RATE}, steady offer {OFFER_RATE:g}/s",
            steady.rate,
            "tasks/s",
            f"{steady.error:+.2%} vs 20/s; {len(steady.starts)} starts in {duration:.0f} s; "
            f"peak {steady.peak_per_second()} in any 1 s; "
            f"longest gap {max(steady.gaps_ms(), default=0):.0f} ms; "
            f"{steady.offered} offered ({offered_rate:.2f}/s); "
            f"first seconds: {' '.join(map(str, steady.per_second()[:6]))}",
        ),
        Row(
            f"taskguard {RATE}, burst (all queued at once)",
            burst.rate,
            "tasks/s",
            f"{burst.error:+.2%} vs 20/s; {burst.offered} queued; "
            f"peak {burst.peak_per_second()} in any 1 s; "
            f"longest gap {max(burst.gaps_ms(), default=0):.0f} ms; "
            f"first seconds: {' '.join(map(str, burst.per_second()[:6]))}",
        ),
        Row(
            f"  burst, after the first {skip:g} s",
            burst.steady_rate(skip),
            "tasks/s",
            f"{burst.steady_rate(skip) / TARGET - 1:+.2%}",
        ),
        _celery_row(builtin_steady, f"steady offer {OFFER_RATE:g}/s"),
        _celery_row(builtin, "burst"),
    ]
    goal = Goal(
        f"steady offer within ±{TOLERANCE:.0%} of {TARGET:.0f}/s ({WORKERS} workers)",
        abs(steady.error) <= TOLERANCE,
        steady.rate,
    )
    details = {
        "taskguard_steady": {**steady.summary(), f"rate_after_{skip:g}s": steady.steady_rate(skip)},
        "taskguard_burst": {**burst.summary(), f"rate_after_{skip:g}s": burst.steady_rate(skip)},
        "celery_steady": {
            **builtin_steady.summary(),
            f"rate_after_{skip:g}s": builtin_steady.steady_rate(skip),
        },
        "celery_burst": {**builtin.summary(), f"rate_after_{skip:g}s": builtin.steady_rate(skip)},
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
