"""The parking stage: a fleet-wide ``Concurrency(2)`` under a backlog published at once.

:data:`TASKS` tasks, each holding a slot for :data:`DURATION` seconds, are published at
once to a fleet of at least :data:`MIN_PROCESSES` pool processes. Two run at a time; every
other one is refused, parked in Redis (FIFO on the cap's key) and handed back, with the
slot held for it, by the release that frees one: the fleet never leaves a slot idle while
work waits. While the batch runs, the stage samples ``Client.parked()``. Then, on the same
fleet, the same batch of a task deferred by time (``park: False``) shows what parking
replaced: refused tasks come back after about a second, in waves.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import redis

import taskguard
from taskguard.testing import WorkerProcess

from .config import PARK_STAGE, DemoConfig
from .park_report import CapRun, ParkResult
from .stages import DemoError, _fleet
from .status_view import StatusSampler, render_status
from .tasks import BY_TIME_RECORDS, BY_TIME_TASK, CAP, PARKED_TASK

__all__ = ["PARK_TITLE", "TASKS", "run_park_stage", "stage_concurrency"]

PARK_TITLE = f"Concurrency({CAP}): refused tasks parked in Redis, handed back by each release"

#: Tasks per batch, and the seconds each holds its slot: the ideal makespan is
#: ``TASKS * DURATION / CAP`` (6 s).
TASKS = 40
DURATION = 0.3
#: The fleet has at least this many pool processes, so most tasks are refused at first.
MIN_PROCESSES = 4
#: Seconds a batch may take, in multiples of its ideal makespan (plus a constant): the
#: parked batch needs about 1x, the one deferred by time about 3.5x.
TIMEOUT_FACTOR, TIMEOUT_EXTRA = 5.0, 10.0
#: Seconds to keep watching after the last task ran: a second run of any task (a
#: hand-back delivered twice, say) would show up here.
SETTLE = 0.5
TICK = 0.05

Echo = Callable[..., None]


def stage_concurrency(workers: int, concurrency: int) -> int:
    """Pool processes per worker for this stage: ``concurrency``, raised so the fleet has
    at least :data:`MIN_PROCESSES`.

    Example:
        >>> stage_concurrency(3, 1), stage_concurrency(2, 1), stage_concurrency(4, 3)
        (2, 2, 3)
    """
    return max(concurrency, math.ceil(MIN_PROCESSES / workers))


def _check_alive(fleet: list[WorkerProcess]) -> None:
    for worker in fleet:
        if not worker.is_alive():
            raise DemoError(f"worker {worker.hostname} exited:\n{worker.log()[-3000:]}")


def _run_batch(
    task: Any,
    *,
    client: redis.Redis,
    guards: taskguard.Client,
    key: str,
    fleet: list[WorkerProcess],
) -> CapRun:
    """Publish :data:`TASKS` tasks at once; follow them until each ran (or time ran out)."""
    client.delete(key)
    with task.app.producer_or_acquire() as producer:
        for n in range(TASKS):
            task.apply_async((n, DURATION), producer=producer)
    deadline = time.monotonic() + TIMEOUT_FACTOR * TASKS * DURATION / CAP + TIMEOUT_EXTRA
    checked = time.monotonic()
    peak = 0
    sampler = StatusSampler(guards)
    settle_until: float | None = None
    while True:
        now = time.monotonic()
        parked = sum(guards.parked().values())
        peak = max(peak, parked)
        sampler.offer(parked)
        if settle_until is None and client.llen(key) >= TASKS:
            settle_until = now + SETTLE
        if (settle_until is not None and now >= settle_until) or now >= deadline:
            break
        if now - checked >= 1.0:
            checked = now
            _check_alive(fleet)
        time.sleep(TICK)
    runs = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    return CapRun(
        TASKS,
        DURATION,
        runs,
        peak_parked=peak,
        timed_out=settle_until is None,
        status=sampler.best,
    )


def _say(echo: Echo, label: str, run: CapRun) -> None:
    if not run.runs:
        echo(f"  {label}: no task ran")
        return
    done = "" if not run.timed_out else f" (timed out: {run.tasks - run.missing} ran)"
    echo(
        f"  {label}: {run.makespan:.1f}s for {run.tasks} tasks{done}, ideal {run.ideal:.1f}s; "
        f"at most {run.peak_parked} parked at once"
    )


def run_park_stage(
    app: Any,
    config: DemoConfig,
    *,
    workers: int,
    concurrency: int,
    echo: Echo,
    compare: bool = True,
) -> ParkResult:
    """Run the stage and return what it measured.

    Args:
        app: The demo's Celery app.
        config: This run's wiring.
        workers: Worker instances in the fleet.
        concurrency: Pool processes per worker asked for (raised by
            :func:`stage_concurrency`).
        echo: Prints progress.
        compare: Also run the batch deferred by time (``park: False``).

    Raises:
        DemoError: Workers did not start, or one exited.
    """
    per_worker = stage_concurrency(workers, concurrency)
    client = redis.Redis.from_url(config.redis_url)
    guards = taskguard.connect(config.redis_url, prefix=config.prefix)
    try:
        echo(f"  starting {workers} workers (celery worker -c {per_worker}) ...", nl=False)
        began = time.monotonic()
        with _fleet(config, PARK_STAGE, workers, per_worker) as fleet:
            echo(f" ready in {time.monotonic() - began:.1f}s")
            echo(
                f"  published {TASKS} tasks of {DURATION:g}s at once to "
                f"{workers * per_worker} pool processes; sampling client.parked() ..."
            )

            def batch(task: str, records: str) -> CapRun:
                return _run_batch(
                    app.tasks[task],
                    client=client,
                    guards=guards,
                    key=config.starts_key(records),
                    fleet=fleet,
                )

            parked = batch(PARKED_TASK, PARK_STAGE)
            _say(echo, "parked", parked)
            if parked.status is not None:
                echo(
                    f"  taskguard status when the most were parked (read in "
                    f"{parked.status.elapsed * 1000:.0f} ms; `taskguard status` shows it as "
                    "tables):"
                )
                for line in render_status(parked.status):
                    echo(line)
            by_time = None
            if compare:
                echo(f"  the same {TASKS} tasks deferred by time (park: False) ...")
                by_time = batch(BY_TIME_TASK, BY_TIME_RECORDS)
                _say(echo, "by time", by_time)
            echo("  stopping workers ...", nl=False)
            stopping = time.monotonic()
        echo(f" done in {time.monotonic() - stopping:.1f}s")
    finally:
        guards.close()
        client.close()
    return ParkResult(workers=workers, concurrency=per_worker, parked=parked, by_time=by_time)
