"""(p) fair shares: does a small tenant's task start within one task duration of its
arrival while a big tenant has 1000 tasks queued against the same cap? (issue 16, item 5)

Real ``celery worker`` processes (2 workers x 8 prefork processes) on the run's
throwaway Redis (broker, guard state and recordings, times from its ``TIME``) run
``bench.tenant_sleep``: 0.5 s under ``Concurrency(10, fair="{tenant}")``. The big tenant's
1000 tasks are published before the workers start, so they are all refused and parked at
(10 run, 990 wait: 50 s of work). Once the broker holds none of them (every big task
taken from its queue, and from the workers' prefetch, and parked in Redis), the small
tenant sends 10 tasks, one every 2 s plus a
random part of a task duration (so arrivals fall at every phase of the slots' releases).
Figures: the small tenant's start delay (its task's start minus the publisher's reading
of ``TIME`` just before sending), worst and median, in task durations; what first in,
first out would have made it wait (the big tasks parked at its arrival x 0.5 s / 10); the
most runs at once; the makespan against the ideal. The goal is issue 16's: every small
task starts within one task duration.

For contrast, without a goal: 3 tasks of a third tenant ("early") sent while the big
tenant's tasks are still in the broker queue, before the workers took them. Fair shares
order the tasks parked in Redis; a message behind others in the broker's queue (or in a
worker's prefetch) waits for the workers to take and park those first, at whatever pace
they refuse them (the row "workers took ... in").

Not a test: it takes about a minute, too slow for CI; tests/integration/
test_parking_fleet.py has a short version (30 against 3, cap 3).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import redis
from celery import Celery

import taskguard
from taskguard.testing import worker_fleet

from .celeryrun import APP, client_app, publish, redis_time, worker_options
from .harness import BenchResult, Context, Goal, Row

NAME = "fairness"
TITLE = "fair shares: a small tenant's start delay beside 1000 queued tasks, cap 10"

CAP, DURATION, WORKERS, PROCESSES = 10, 0.5, 2, 8
BIG, SMALL, SPACING, EARLY = 1000, 10, 2.0, 3
QUICK_BIG, QUICK_SMALL, QUICK_SPACING = 200, 4, 1.5
GOAL_DELAY = 1.0  # task durations
TASK = "bench.tenant_sleep"


@dataclass(frozen=True)
class Run:
    """One tenant's tasks: (arrival, start, end, deferrals) each."""

    tenant: str
    runs: list[tuple[float, float, float, int]]

    @property
    def delays(self) -> list[float]:
        """Start minus arrival, in task durations."""
        return [(start - arrival) / DURATION for arrival, start, _, _ in self.runs]


def _parse(raw: list[bytes | str]) -> dict[str, Run]:
    by_tenant: dict[str, list[tuple[float, float, float, int]]] = {}
    for entry in raw:
        text = entry.decode() if isinstance(entry, bytes) else entry
        tenant, arrival, start, end, deferrals = text.split()
        row = (float(arrival), float(start), float(end), int(deferrals))
        by_tenant.setdefault(tenant, []).append(row)
    return {t: Run(t, sorted(rows, key=lambda r: r[1])) for t, rows in by_tenant.items()}


def _peak(runs: list[tuple[float, float, float, int]]) -> int:
    events = sorted([(s, 1) for _, s, _, _ in runs] + [(e, -1) for _, _, e, _ in runs])
    now = peak = 0
    for _, step in events:  # at equal times ends (-1) sort first
        now += step
        peak = max(peak, now)
    return peak


def _parked(client: taskguard.Client) -> int:
    return sum(client.parked().values())


def _in_broker(records: redis.Redis, queue: str) -> int:
    """Messages in the queue, or reserved by a worker and not started (Celery's Redis
    transport keeps those in the ``unacked`` hash; the server is this run's alone)."""
    return int(records.llen(queue)) + int(records.hlen("unacked"))


def _send(app: Celery, records: redis.Redis, key: str, queue: str, tenant: str) -> None:
    arrival = redis_time(records)
    app.send_task(TASK, args=(key, tenant, DURATION, arrival), queue=queue)


def run(context: Context) -> list[BenchResult]:
    big, small, spacing = (
        (QUICK_BIG, QUICK_SMALL, QUICK_SPACING) if context.quick else (BIG, SMALL, SPACING)
    )
    queue = context.unique(NAME)
    key = context.unique(f"{NAME}-runs")
    records = context.client()
    guards = taskguard.connect(context.server.url, prefix=queue)
    app = client_app(context.server.url)
    options = worker_options(context.server.url, prefix=queue)
    rng = random.Random(16)
    backlog_at_arrival: list[int] = []
    try:
        publish(app, TASK, big, queue, args=(key, "big", DURATION, 0.0))
        with worker_fleet(APP, WORKERS, concurrency=PROCESSES, queues=[queue], **options):
            started = time.monotonic()
            for _ in range(EARLY):  # behind the big tenant's tasks in the broker queue
                _send(app, records, key, queue, "early")
                time.sleep(spacing / 2)
            deadline = time.monotonic() + 120
            while records.llen(queue) and time.monotonic() < deadline:
                time.sleep(0.01)
            taken = time.monotonic() - started
            while _in_broker(records, queue) and time.monotonic() < deadline:
                time.sleep(0.01)
            for _ in range(small):
                backlog_at_arrival.append(_parked(guards))
                _send(app, records, key, queue, "small")
                time.sleep(spacing + rng.uniform(0, DURATION))
            deadline = time.monotonic() + 3 * (big + small) * DURATION / CAP + 60
            while records.llen(key) < big + small + EARLY and time.monotonic() < deadline:
                time.sleep(0.1)
        tenants = _parse(records.lrange(key, 0, -1))
    finally:
        records.delete(key)
        records.close()
        guards.close()
        app.close()
    return [_result(tenants, big, small, backlog_at_arrival, taken)]


def _result(
    tenants: dict[str, Run], big: int, small: int, backlog_at_arrival: list[int], taken: float
) -> BenchResult:
    smalls = tenants.get("small", Run("small", []))
    bigs = tenants.get("big", Run("big", []))
    early = tenants.get("early", Run("early", []))
    delays = smalls.delays
    worst = max(delays, default=float("inf"))
    done = len(smalls.runs) == small and len(bigs.runs) == big and len(early.runs) == EARLY
    fifo = [n / CAP for n in backlog_at_arrival]  # in task durations
    everything = bigs.runs + smalls.runs + early.runs
    peak = _peak(everything)
    makespan = (
        max(e for _, _, e, _ in everything) - min(s for _, s, _, _ in everything)
        if everything
        else float("inf")
    )
    ideal = (big + small + EARLY) * DURATION / CAP
    finished = f"{len(smalls.runs)}/{small} small, {len(bigs.runs)}/{big} big finished"
    return BenchResult(
        NAME,
        f"{small} tasks of a small tenant beside {big} queued tasks of a big one, "
        f"Concurrency({CAP}, fair=...), {WORKERS} workers x {PROCESSES} processes, "
        f"{DURATION} s tasks",
        [
            Row("small tenant: worst start delay", worst, "durations", finished),
            Row(
                "small tenant: median start delay",
                statistics.median(delays) if delays else float("inf"),
                "durations",
                f"in seconds: worst {worst * DURATION:.3f}",
            ),
            Row(
                "first in, first out would have waited (mean)",
                statistics.mean(fifo) if fifo else 0.0,
                "durations",
                "the big tasks parked at each arrival x duration / cap",
            ),
            Row(
                "while still in the broker queue: worst start delay",
                max(early.delays, default=float("inf")),
                "durations",
                f"{len(early.runs)}/{EARLY} tasks sent before the big ones were parked; no goal",
            ),
            Row(
                f"workers emptied the queue of {big} big tasks in",
                taken,
                "s",
                f"{big / taken:.0f} messages/s taken (and parked), beside {CAP} busy slots",
            ),
            Row("most runs at once", peak, "runs", f"cap {CAP}", decimals=0),
            Row(
                "makespan / ideal",
                makespan / ideal,
                "x",
                f"{makespan:.1f} s against {ideal:.1f} s",
            ),
        ],
        Goal(
            f"every small task starts within {GOAL_DELAY:g} task duration, cap kept",
            done and worst <= GOAL_DELAY and peak <= CAP,
            worst,
        ),
        {
            "delays_durations": [round(d, 3) for d in delays],
            "early_delays_durations": [round(d, 3) for d in early.delays],
            "broker_drain_s": taken,
            "backlog_at_arrival": backlog_at_arrival,
            "small_deferrals": [d for _, _, _, d in smalls.runs],
            "makespan_s": makespan,
            "ideal_s": ideal,
            "peak": peak,
        },
    )
