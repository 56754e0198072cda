"""The write-behind stage: tasks write through a write-behind cache, the workers drain it.

Every worker of the stage runs a drain pool (the ``drain`` setting, a worker bootstep);
all but the first also run :data:`~taskguard.demo.tasks.WRITEBEHIND_TASK`, each task one
``set_many`` of readings for :data:`~taskguard.demo.tasks.SENSORS` sensors. Once
:data:`KILL_AT` of the tasks are done, the first worker, which only drains, is killed with
``SIGKILL`` while it holds partitions and unacknowledged batches: the others take its
partitions over when their leases run out and re-deliver what it had read. At the end every
sensor's row in the database must hold the newest reading written, which is the one in the
cache (the cache and the queue are written by one atomic script).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import redis

import taskguard
from taskguard.drain import metrics as drain_metrics
from taskguard.sinks import store_from_url
from taskguard.testing import WorkerProcess

from .config import WRITEBEHIND_STAGE, DemoConfig
from .stages import DemoError, _fleet
from .tasks import NAMESPACE, SENSORS, WRITEBEHIND_TASK, WRITES_PER_TASK

if TYPE_CHECKING:
    from taskguard.sinks.sql import SQLStore

__all__ = ["TASKS", "WRITEBEHIND_TITLE", "WriteBehindResult", "run_writebehind_stage"]

WRITEBEHIND_TITLE = "Write-behind: the workers drain a cache's queue into the database"

#: Tasks published (each writes :data:`WRITES_PER_TASK` readings).
TASKS = 1000
#: Fraction of the tasks done when the drain-only worker is killed.
KILL_AT = 0.3
#: Seconds allowed for the tasks to run and the queue to drain.
TIMEOUT = 90.0
TICK = 0.1

Echo = Callable[..., None]


@dataclass
class WriteBehindResult:
    """What the write-behind stage measured.

    Attributes:
        db_url: The database the readings were drained into.
        writes: Readings written through the cache.
        tasks: Tasks that wrote them.
        sensors: Distinct keys written.
        partitions: The namespace's partitions.
        killed_held: Partitions the killed worker held when it was killed.
        killed_at: Seconds into the stage when it was killed (None: not killed).
        peak_backlog: Most records queued at once.
        drained_after: Seconds from the last task's write until the queue was empty.
        rows: Database rows (sensors) found.
        exact: Rows equal to the newest reading written.
        stale: Sensors whose row holds an older reading (or none).
        dead_letters: Records the drain dead-lettered.
        records: Queue records the drain pools acknowledged (from their signals).
        rows_written: Rows they wrote (records coalesced per key per batch).
        batches: Batches they committed.
        seconds: The stage's length, publish to drained.
    """

    db_url: str
    writes: int = 0
    tasks: int = 0
    sensors: int = SENSORS
    partitions: int = 0
    killed_held: int = 0
    killed_at: float | None = None
    peak_backlog: int = 0
    drained_after: float | None = None
    rows: int = 0
    exact: int = 0
    stale: list[str] = field(default_factory=list)
    dead_letters: int = 0
    records: int = 0
    rows_written: int = 0
    batches: int = 0
    seconds: float = 0.0


def _held_by(client: redis.Redis, backend: Any, partitions: int, pid: int) -> int:
    """Partitions whose drain lease names process ``pid`` as its owner."""
    keys = [backend.keys.drain_lease(NAMESPACE, p) for p in range(partitions)]
    owners = [_text(owner) for owner in client.mget(keys) if owner]
    return len([owner for owner in owners if owner.split(":")[1] == str(pid)])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run_writebehind_stage(
    app: Any, config: DemoConfig, *, workers: int, concurrency: int, echo: Echo
) -> WriteBehindResult:
    """Run the stage and return what it measured.

    Raises:
        DemoError: Workers did not start, or the tasks did not finish in time.
    """
    result = WriteBehindResult(db_url=config.db_url)
    # The demo's database is PostgreSQL or SQLite: the registry builds a SQLStore.
    store = cast("SQLStore", store_from_url(config.db_url, table=config.table))
    store.create_table()
    backend = taskguard.connect(config.redis_url, prefix=config.prefix).backend
    cache = taskguard.connect(backend).cache(
        NAMESPACE, strategy="write-behind", ttl=600, store=store
    )
    result.partitions = cache.partitions
    client = redis.Redis.from_url(config.redis_url)
    drainer = config.queue("drain-only")
    task = app.tasks[WRITEBEHIND_TASK]
    try:
        echo(f"  starting {workers} workers, each with a drain pool ...", nl=False)
        began = time.monotonic()
        with _fleet(
            replace(config, drain=True),
            WRITEBEHIND_STAGE,
            workers,
            concurrency,
            queues=[drainer] + [config.queue(WRITEBEHIND_STAGE)] * (workers - 1),
        ) as fleet:
            echo(f" ready in {time.monotonic() - began:.1f}s")
            with app.producer_or_acquire() as producer:
                for batch in range(TASKS):
                    task.apply_async((batch,), producer=producer)
            start = time.monotonic()
            echo(
                f"  published {TASKS} tasks ({TASKS * WRITES_PER_TASK:,} writes to "
                f"{SENSORS} sensors); worker 1 only drains, and is killed with SIGKILL "
                f"once {KILL_AT:.0%} are done ..."
            )
            _watch(
                result, fleet, client=client, backend=backend, config=config, start=start, echo=echo
            )
            echo("  stopping workers ...", nl=False)
            stopping = time.monotonic()
        echo(f" done in {time.monotonic() - stopping:.1f}s")
        _check(result, cache, store, client, config)
    finally:
        client.close()
        store.drop_table()
        store.close()
    return result


def _watch(
    result: WriteBehindResult,
    fleet: list[WorkerProcess],
    *,
    client: redis.Redis,
    backend: Any,
    config: DemoConfig,
    start: float,
    echo: Echo,
) -> None:
    """Follow the stage until the queue is empty: kill worker 1 on the way."""
    last_write: float | None = None
    while True:
        now = time.monotonic() - start
        done = int(client.get(config.done_key(WRITEBEHIND_STAGE)) or 0)
        queue = drain_metrics(backend, NAMESPACE)
        result.peak_backlog = max(result.peak_backlog, queue.backlog)
        if result.killed_at is None and done >= TASKS * KILL_AT:
            victim = fleet[0]
            result.killed_held = _held_by(client, backend, result.partitions, victim.pid)
            victim.kill()
            result.killed_at = now
            echo(
                f"  t={now:4.1f}s  killed worker 1 (pid {victim.pid}) holding "
                f"{result.killed_held} of {result.partitions} partitions; backlog "
                f"{queue.backlog:,}, unacknowledged {queue.pending:,}"
            )
        if done >= TASKS and last_write is None:
            last_write = now
            echo(f"  t={now:4.1f}s  all tasks done; backlog {queue.backlog:,}")
        if last_write is not None and queue.backlog == 0 and queue.pending == 0:
            result.drained_after = now - last_write
            result.seconds = now
            echo(f"  t={now:4.1f}s  queue empty: everything is in the database")
            break
        if now > TIMEOUT:
            raise DemoError(
                f"the write-behind stage did not finish in {TIMEOUT:.0f}s: {done} of "
                f"{TASKS} tasks done, {queue.backlog} records queued, "
                f"{queue.pending} unacknowledged"
            )
        time.sleep(TICK)


def _check(
    result: WriteBehindResult,
    cache: Any,
    store: SQLStore,
    client: redis.Redis,
    config: DemoConfig,
) -> None:
    sensors = [f"sensor-{n:03d}" for n in range(SENSORS)]
    newest = cache.get_many(sensors)
    rows = store.load_many(NAMESPACE, sensors)
    result.tasks = int(client.get(config.done_key(WRITEBEHIND_STAGE)) or 0)
    result.writes = result.tasks * WRITES_PER_TASK
    result.rows = sum(1 for key in sensors if key in rows and not rows[key].deleted)
    result.stale = [key for key in sensors if key not in rows or rows[key].value != newest.get(key)]
    result.exact = len(sensors) - len(result.stale)
    result.dead_letters = drain_metrics(cache.backend, NAMESPACE).dead_letters
    totals = {_text(k): int(v) for k, v in client.hgetall(config.drained_key()).items()}
    result.records = totals.get("records", 0)
    result.rows_written = totals.get("rows", 0)
    result.batches = totals.get("batches", 0)
