"""(n) and (o): is taskguard's deferral work-conserving? Issue 12's goals, on both brokers.

Every scenario runs on real ``celery worker`` processes, once with the run's throwaway
Redis as the broker and once with RabbitMQ (``$TASKGUARD_BENCH_AMQP_URL``, default
``amqp://guest:guest@127.0.0.1:5672//``). Guard state and the tasks' recordings are always
on the throwaway Redis, with times from its ``TIME``. Each run publishes every task to a
queue of its own *before* its workers start, so the backlog is there at once; afterwards
the queue and its companion ``<queue>.deferred`` (if any) are deleted, with nothing else.

* **(n) concurrency cap**: ``Concurrency(2)`` (defaults otherwise) on one worker with six
  prefork processes; 60 tasks sleeping 0.3 s, so the ideal makespan is 9 s. Figures:
  makespan / ideal (first start to last end), mean occupancy of the cap over that window,
  the most runs at once, and deferrals per task. Celery has no cross-worker cap.
* **(o) rate limit under a backlog**: ``RateLimit("20/s")`` on three workers at ``-c1``,
  600 no-op tasks. Figures over first start to last start: achieved rate / limit, the
  emptiest whole second after the first one, the most starts in any sliding second
  against limit + burst, and deferrals per task. Then Celery's own ``rate_limit="20/s"``
  on a fresh fleet of the same shape, whose per-worker limit lets the fleet go above 20/s.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from taskguard import RateLimit
from taskguard.testing import worker_fleet

from .accuracy import Phase
from .brokers import AMQP_URL, Broker, amqp_broker, masked, redis_broker
from .celeryrun import APP, Start, client_app, publish, read_starts, worker_options
from .harness import BenchResult, Context, Goal, Row

NAME = "workconserving"
TITLE = "work-conserving deferral: Concurrency(2) and RateLimit(20/s) under a backlog"

CAP, CAP_PROCESSES, CAP_SLEEP = 2, 6, 0.3
RATE, LIMIT, RATE_WORKERS = "20/s", 20.0, 3
BURST = RateLimit(RATE).burst
#: Celery's limit may collapse under a backlog (see accuracy); it is measured over this.
CELERY_WINDOW = 10.0
GOAL_MAKESPAN, GOAL_OCCUPANCY, GOAL_CAP_DEFERRALS = 1.10, 0.95, 1.5
GOAL_RATE, GOAL_MIN_SECOND, GOAL_RATE_DEFERRALS = 0.98, 0.90, 1.2


@contextmanager
def _backlog(
    context: Context,
    broker: Broker,
    task: str,
    args: tuple[object, ...],
    *,
    count: int,
    workers: int,
    concurrency: int,
) -> Iterator[None]:
    """Publish ``count`` tasks to a fresh queue, then start workers on it; delete it after."""
    queue = context.unique(f"{NAME}-{task}-{broker.label}")
    app = client_app(broker.url)
    options = worker_options(
        broker.url, prefix=queue, state_url=context.server.url, record_url=context.server.url
    )
    try:
        publish(app, task, count, queue, args=args)
        with worker_fleet(APP, workers, concurrency=concurrency, queues=[queue], **options):
            yield
    finally:
        app.close()
        broker.delete_queues([queue, f"{queue}.deferred"])


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()


def _wait(client: redis.Redis, key: str, count: int, deadline: Callable[[], float]) -> bool:
    """Wait until ``count`` entries are under ``key`` or ``deadline()`` (monotonic) passes."""
    while client.llen(key) < count:
        if time.monotonic() > deadline():
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------- (n) concurrency cap


@dataclass(frozen=True)
class CapRun:
    """The recorded runs of the capped task: (start, end, deferrals), start order."""

    tasks: int
    runs: list[tuple[float, float, int]]

    @property
    def ideal(self) -> float:
        return self.tasks * CAP_SLEEP / CAP

    @property
    def makespan(self) -> float:
        return max(end for _, end, _ in self.runs) - self.runs[0][0] if self.runs else math.inf

    def running(self) -> tuple[float, int]:
        """(integral of the running count over the busy window, the most at once)."""
        events = sorted([(s, 1) for s, _, _ in self.runs] + [(e, -1) for _, e, _ in self.runs])
        area, now, peak, last = 0.0, 0, 0, events[0][0] if events else 0.0
        for at, step in events:  # at equal times ends (-1) sort first
            area += now * (at - last)
            now, last = now + step, at
            peak = max(peak, now)
        return area, peak

    @property
    def occupancy(self) -> float:
        return self.running()[0] / (CAP * self.makespan) if self.runs else 0.0

    @property
    def deferrals(self) -> float:
        return sum(d for _, _, d in self.runs) / len(self.runs) if self.runs else math.inf


def _cap(context: Context, broker: Broker, tasks: int) -> CapRun:
    client = context.client()
    key = context.unique(f"{NAME}-cap-{broker.label}-runs")
    try:
        args = (key, CAP_SLEEP)
        with _backlog(
            context,
            broker,
            "bench.capped_sleep",
            args,
            count=tasks,
            workers=1,
            concurrency=CAP_PROCESSES,
        ):
            limit = time.monotonic() + 6 * tasks * CAP_SLEEP / CAP + 10
            _wait(client, key, tasks, lambda: limit)
        raw = [_text(entry).split() for entry in client.lrange(key, 0, -1)]
    finally:
        client.delete(key)
        client.close()
    runs = sorted((float(s), float(e), int(d)) for s, e, d in raw)
    return CapRun(tasks, runs)


def _cap_results(broker: str, run: CapRun) -> list[BenchResult]:
    name = f"cap-{broker}"
    area, peak = run.running()
    ratio = run.makespan / run.ideal
    done = len(run.runs)
    finished = f"{done} of {run.tasks} finished" + (" (timed out)" if done < run.tasks else "")
    details = {
        "broker": broker,
        "tasks": run.tasks,
        "finished": done,
        "makespan_s": run.makespan,
        "ideal_s": run.ideal,
        "slot_seconds": area,
        "runs_ms": [
            [round((s - run.runs[0][0]) * 1000, 1), round((e - run.runs[0][0]) * 1000, 1), d]
            for s, e, d in run.runs
        ],
    }
    cap = f"Concurrency({CAP}), 1 worker x {CAP_PROCESSES} processes"
    return [
        BenchResult(
            f"{name}-makespan",
            f"makespan of {run.tasks} x {CAP_SLEEP} s tasks under {cap}, {broker} broker",
            [
                Row("makespan / ideal", ratio, "x", f"{finished}; published before the worker"),
                Row("makespan, first start to last end", run.makespan, "s"),
                Row(
                    f"ideal: {run.tasks} x {CAP_SLEEP} s / {CAP}",
                    run.ideal,
                    "s",
                    "no Celery equivalent: Celery has no cross-worker cap",
                ),
            ],
            Goal(
                f"<= {GOAL_MAKESPAN:.2f}x ideal",
                done == run.tasks and ratio <= GOAL_MAKESPAN,
                ratio,
            ),
            details,
        ),
        BenchResult(
            f"{name}-occupancy",
            f"mean occupancy of the cap over the busy window, {broker} broker",
            [Row("slot-seconds / (2 x busy window)", run.occupancy * 100, "%", decimals=1)],
            Goal(f">= {GOAL_OCCUPANCY:.0%}", run.occupancy >= GOAL_OCCUPANCY, run.occupancy),
        ),
        BenchResult(
            f"{name}-maxrunning",
            f"most runs at once, {broker} broker",
            [Row("most task bodies running at once", peak, "runs", decimals=0)],
            Goal(f"never above {CAP}", peak <= CAP, peak),
        ),
        BenchResult(
            f"{name}-deferrals",
            f"deferrals per task before its run, {broker} broker",
            [
                Row(
                    "deferrals per task, mean",
                    run.deferrals,
                    "/task",
                    f"max {max((d for _, _, d in run.runs), default=0)}",
                )
            ],
            Goal(f"<= {GOAL_CAP_DEFERRALS}", run.deferrals <= GOAL_CAP_DEFERRALS, run.deferrals),
        ),
    ]


# ---------------------------------------------------------------- (o) rate limit


def _rate(context: Context, broker: Broker, task: str, tasks: int, window: float) -> list[Start]:
    """Start times of ``tasks`` queued ``task``s on a fresh fleet, over at most ``window``."""
    client = context.client()
    key = context.unique(f"{NAME}-{task}-{broker.label}-starts")
    try:
        with _backlog(
            context, broker, task, (key,), count=tasks, workers=RATE_WORKERS, concurrency=1
        ):
            began = time.monotonic()
            _wait(client, key, 1, lambda: began + 30)
            end = time.monotonic() + window
            _wait(client, key, tasks, lambda: end)
            starts = read_starts(client, key)
    finally:
        client.delete(key)
        client.close()
    return starts


@dataclass(frozen=True)
class RateRun:
    starts: list[Start]
    tasks: int

    @property
    def span(self) -> float:
        return self.starts[-1].at - self.starts[0].at

    @property
    def rate(self) -> float:
        return (len(self.starts) - 1) / self.span if self.span > 0 else 0.0

    def seconds(self) -> list[int]:
        """Starts in each whole second from the first start (the partial last one left out)."""
        counts = [0] * int(self.span)
        for start in self.starts:
            index = int(start.at - self.starts[0].at)
            if index < len(counts):
                counts[index] += 1
        return counts

    @property
    def deferrals(self) -> float:
        return sum(start.deferrals for start in self.starts) / len(self.starts)


def _rate_results(broker: str, run: RateRun, celery: Phase) -> list[BenchResult]:
    name = f"rate-{broker}"
    done = len(run.starts)
    per_second = run.seconds()
    low = min(per_second[1:], default=0) / LIMIT
    peak = Phase("", run.span, run.starts).peak_per_second()
    finished = f"{done} of {run.tasks} started" + (" (timed out)" if done < run.tasks else "")
    details = {
        "broker": broker,
        "tasks": run.tasks,
        "started": done,
        "span_s": run.span,
        "rate_per_s": run.rate,
        "burst": BURST,
        "starts_per_second": per_second,
        "start_offsets_ms": [round((s.at - run.starts[0].at) * 1000, 1) for s in run.starts],
        "deferrals": [start.deferrals for start in run.starts],
        "celery": celery.summary(),
    }
    celery_rate, celery_peak = celery.rate, celery.peak_per_second()
    where = f"{RATE_WORKERS} workers x -c1, {broker} broker"
    return [
        BenchResult(
            f"{name}-achieved",
            f'RateLimit("{RATE}") with {run.tasks} tasks queued at once, {where}',
            [
                Row("achieved / limit, first to last start", run.rate / LIMIT, "x", finished),
                Row("achieved rate", run.rate, "tasks/s", f"over {run.span:.1f} s"),
            ],
            Goal(f">= {GOAL_RATE}x", done == run.tasks and run.rate >= GOAL_RATE * LIMIT, run.rate),
            details,
        ),
        BenchResult(
            f"{name}-minsecond",
            f"emptiest whole second after the first one, {broker} broker",
            [
                Row(
                    "min starts in a second (after the 1st) / limit",
                    low * 100,
                    "%",
                    "per second: " + " ".join(map(str, per_second)),
                    decimals=0,
                )
            ],
            Goal(f"no second below {GOAL_MIN_SECOND:.0%}", low >= GOAL_MIN_SECOND, low),
        ),
        BenchResult(
            f"{name}-peak",
            f"most starts in any sliding second, {broker} broker",
            [Row("most starts in any sliding 1 s", peak, "starts", decimals=0)],
            Goal(f"<= limit + burst ({LIMIT:.0f} + {BURST})", peak <= LIMIT + BURST, peak),
        ),
        BenchResult(
            f"{name}-deferrals",
            f"deferrals per task before its run, {broker} broker",
            [
                Row(
                    "deferrals per task, mean",
                    run.deferrals,
                    "/task",
                    f"max {max(start.deferrals for start in run.starts)}",
                )
            ],
            Goal(f"<= {GOAL_RATE_DEFERRALS}", run.deferrals <= GOAL_RATE_DEFERRALS, run.deferrals),
        ),
        BenchResult(
            f"{name}-celery",
            f'Celery rate_limit="{RATE}" (per worker) with the same backlog, {where}',
            [
                Row(
                    f"Celery fleet rate, first {celery.duration:g} s",
                    celery_rate,
                    "tasks/s",
                    f"{celery_rate / LIMIT:.2f}x {RATE}; peak {celery_peak} in any 1 s "
                    f"({celery_peak / LIMIT:.2f}x); per second: "
                    + " ".join(map(str, celery.per_second())),
                )
            ],
        ),
    ]


def run(context: Context) -> list[BenchResult]:
    cap_tasks, rate_tasks = (20, 200) if context.quick else (60, 600)
    celery_window = CELERY_WINDOW / 2 if context.quick else CELERY_WINDOW
    brokers: list[Broker] = [redis_broker(context)]
    amqp = amqp_broker(AMQP_URL)
    shown = masked(AMQP_URL)
    if amqp is None:
        print(f"  RabbitMQ at {shown} does not answer: amqp skipped", file=sys.stderr)
    else:
        brokers.append(amqp)
    results = []
    for broker in brokers:
        results += _cap_results(broker.label, _cap(context, broker, cap_tasks))
        limit = 2 * rate_tasks / LIMIT + 10
        guarded = RateRun(
            _rate(context, broker, "bench.guarded_rate", rate_tasks, limit), rate_tasks
        )
        starts = _rate(context, broker, "bench.celery_rate", rate_tasks, celery_window + 1)
        window = [s for s in starts if s.at < starts[0].at + celery_window]
        results += _rate_results(broker.label, guarded, Phase("celery", celery_window, window))
    if amqp is None:
        results.append(
            BenchResult(
                "amqp",
                "the scenarios on RabbitMQ",
                [Row(f"RabbitMQ at {shown} unreachable: not run", 0, "", decimals=0)],
                Goal("run on RabbitMQ too", False, 0),
            )
        )
    return results
