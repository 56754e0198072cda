"""One measured stage: start a fleet of real workers, give it a backlog, count the starts.

The backlog is larger than the fleet could run in the stage even at Celery's overshot
rate, so every worker is always busy and the achieved rate is the limit that is really in
force. The measured window opens at the first start (by Redis ``TIME``) and lasts
``seconds``.

No warm-up is left out of it. A backlog published at once is contested at once: a task
denied a token is deferred, to the slot it reserved when that is within
``reserve_within``, through the deferral lane (``<queue>.deferred``) that the workers read
next to the backlog's queue, and ``reservation_lead`` (0.1 s) ahead of its slot. It comes
back on time, not behind the backlog, so the fleet runs at the limit from its first
second: measured with 3 workers at 10/s, 11, 10, 10, 10 ... starts per second from the
first one, 1.00-1.01x over 8 s (the window's first edge can count one start more).
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from taskguard.testing import WorkerProcess

from .config import DemoConfig
from .tasks import CELERY_TASK, GUARDED_TASK, parse_start

__all__ = ["DemoError", "StageResult", "run_stage"]

#: How much larger than the overshot fleet's capacity the backlog is.
BACKLOG_FACTOR = 1.5
#: Seconds the first task may take to start once the backlog is published.
FIRST_START_TIMEOUT = 30.0

Echo = Callable[..., None]


class DemoError(RuntimeError):
    """A stage could not be measured; the message says why (with a worker log's tail)."""


@dataclass(frozen=True)
class StageResult:
    """What one stage measured.

    Attributes:
        stage: ``"celery"`` or ``"taskguard"``.
        rate: The configured limit, in tasks per second.
        seconds: The length of the measurement window.
        sent: Tasks published.
        workers: Worker instances in the fleet.
        starts: The start records inside the window (``t``, ``retries``, ``deferrals``,
            ``worker``).
        deferrals: Every deferral in the stage (``task_deferred`` signals), including
            those of tasks that had not run when the window closed.
    """

    stage: str
    rate: int
    seconds: float
    sent: int
    workers: int
    starts: list[dict[str, Any]] = field(repr=False)
    deferrals: int = 0

    @property
    def tasks(self) -> int:
        """Tasks started inside the window."""
        return len(self.starts)

    @property
    def achieved(self) -> float:
        """Fleet-wide starts per second inside the window."""
        return self.tasks / self.seconds

    @property
    def ratio(self) -> float:
        """Achieved over configured rate (1.0: the limit held exactly)."""
        return self.achieved / self.rate

    @property
    def retries_spent(self) -> int:
        """Sum of ``request.retries`` over the tasks that ran."""
        return sum(int(s["retries"]) for s in self.starts)

    @property
    def deferred_runs(self) -> int:
        """Tasks that ran after being deferred at least once (header ``taskguard-deferrals``)."""
        return sum(1 for s in self.starts if int(s["deferrals"]) > 0)

    @property
    def workers_used(self) -> int:
        """Distinct worker instances that started tasks."""
        return len({s["worker"] for s in self.starts})


@contextmanager
def _fleet(
    config: DemoConfig,
    stage: str,
    count: int,
    concurrency: int,
    *,
    queues: Sequence[str] | None = None,
) -> Iterator[list[WorkerProcess]]:
    """Like :func:`taskguard.testing.worker_fleet`, but keeps the logs when it fails.

    Worker ``i`` consumes ``queues[i]`` (default: every worker consumes the stage's queue).
    """
    workers = [
        WorkerProcess(
            "taskguard.demo.app",
            concurrency=concurrency,
            queues=[queues[i - 1] if queues else config.queue(stage)],
            hostname=f"{config.prefix}-{stage}{i}@%h",
            env=config.to_env(),
        )
        for i in range(1, count + 1)
    ]
    keep_logs = False
    try:
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            try:
                worker.wait_ready(timeout=60)
            except RuntimeError:
                lines = worker.log().splitlines()[-25:]
                raise DemoError(
                    f"worker {worker.hostname} did not start; the end of its log "
                    f"({worker.logfile}):\n" + "\n".join(lines)
                ) from None
        yield workers
    except Exception:
        keep_logs = True  # for the error message's reader; not kept on Ctrl-C
        raise
    finally:
        for worker in workers:
            if worker.is_alive() and worker.process is not None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.stop()
        for worker in workers:
            if keep_logs:
                print(f"  worker log kept: {worker.logfile}", file=sys.stderr)
            else:
                shutil.rmtree(worker.logfile.parent, ignore_errors=True)


def _server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds + micros / 1e6)


def _first_start(client: redis.Redis, key: str, workers: list[WorkerProcess]) -> float:
    deadline = time.monotonic() + FIRST_START_TIMEOUT
    while time.monotonic() < deadline:
        raw = client.lindex(key, 0)
        if raw is not None:
            return float(parse_start(raw)["t"])
        for worker in workers:
            if not worker.is_alive():
                raise DemoError(f"worker {worker.hostname} exited:\n{worker.log()[-3000:]}")
        time.sleep(0.05)
    raise DemoError(
        f"no task started within {FIRST_START_TIMEOUT:.0f}s; first worker's log:\n"
        f"{workers[0].log()[-3000:]}"
    )


def run_stage(
    app: Any,
    config: DemoConfig,
    stage: str,
    *,
    workers: int,
    concurrency: int,
    seconds: float,
    echo: Echo,
) -> StageResult:
    """Run one stage and return what it measured.

    Raises:
        DemoError: Workers did not start or no task ran.
    """
    task = app.tasks[CELERY_TASK if stage == "celery" else GUARDED_TASK]
    starts_key, deferrals_key = config.starts_key(stage), config.deferrals_key(stage)
    sent = math.ceil(config.rate * workers * seconds * BACKLOG_FACTOR)
    client = redis.Redis.from_url(config.redis_url)
    try:
        client.delete(starts_key, deferrals_key)
        began = time.monotonic()
        echo(f"  starting {workers} workers (celery worker -c {concurrency}) ...", nl=False)
        with _fleet(config, stage, workers, concurrency) as fleet:
            echo(f" ready in {time.monotonic() - began:.1f}s")
            with app.producer_or_acquire() as producer:
                for _ in range(sent):
                    task.apply_async(producer=producer)
            echo(
                f"  published {sent} tasks at once; measuring {seconds:g}s from the first start ..."
            )
            window_start = _first_start(client, starts_key, fleet)
            window_end = window_start + seconds
            # A start recorded just before the window closed may still be in flight.
            while _server_time(client) < window_end + 0.25:
                time.sleep(0.1)
            records = [parse_start(raw) for raw in client.lrange(starts_key, 0, -1)]
            deferrals = int(client.get(deferrals_key) or 0)
            echo("  stopping workers ...", nl=False)
            stopping = time.monotonic()
        echo(f" done in {time.monotonic() - stopping:.1f}s")
    finally:
        client.close()
    in_window = [r for r in records if window_start <= float(r["t"]) < window_end]
    return StageResult(
        stage=stage,
        rate=config.rate,
        seconds=seconds,
        sent=sent,
        workers=workers,
        starts=in_window,
        deferrals=deferrals,
    )
