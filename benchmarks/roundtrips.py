"""(d) Round trips per guarded task, counted by the Redis server itself.

taskguard's state lives on a throwaway Redis that nothing else talks to; the broker and
the tasks' start recordings are on another server. The state server's ``INFO
commandstats`` and ``MONITOR`` around a batch of tasks give every command taskguard sent
for them, whatever the client-side code looks like (see :mod:`benchmarks.servercount`).

Three figures, on one worker (prefork, ``-c 2``):

* once per worker start: connecting and loading the script (the start and a warm-up
  batch, less the warm-up tasks' own share);
* a never-denied ``RateLimit``: the admission at start, and nothing at the end, since
  rate-limit tokens are spent rather than held;
* ``RateLimit("200/s")`` with two seconds' worth of tasks queued: most are denied, reserve
  their slot in that same call and are re-published. A re-run on time for its slot skips
  the bucket it paid for; a late one contests again (taskguard.deferral), so round trips
  are counted per run as well as per task.

What a worker runs on a timer rather than per task, the parking sweeper's script (every
0.25 s in each worker's main process), is counted apart, by its SHA in ``MONITOR``, and
listed in the notes: a batch that takes longer would otherwise show more round trips per
task for the same tasks.

A third result, ``slotrt`` (:mod:`benchmarks.slotcalls`), counts the script calls per
task on a 3-master cluster, where keyed guard state spreads over the slots: one admission
call per slot a task's guards live in, one release.

A second result, ``breakerrt``, checks that a ``CircuitBreaker`` guard adds no round trip
of its own: a task holding a concurrency slot (admission at start, release at the end)
makes as many round trips with a breaker added as without, since the breaker's check
rides in the admission and its outcome in the release. A breaker alone costs the same two.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from taskguard.backend.wire import named_script
from taskguard.testing import RedisServer, WorkerProcess

from .celeryrun import (
    APP,
    client_app,
    publish,
    read_starts,
    wait_for_starts,
    wait_until_drained,
    worker_options,
)
from .harness import BenchResult, Context, Goal, Row
from .servercount import Counted, counting
from .slotcalls import slot_calls

#: What a worker runs on a timer, not per task: the parking sweeper's script (every
#: 0.25 s in each worker's main process). Counted apart from the tasks' round trips.
BACKGROUND = {named_script("park_sweep", ("park",)).sha: "park sweep"}

NAME = "roundtrips"
TITLE = "Redis round trips per guarded task, counted on a state-only server"

GUARDED = "bench.guarded_noop"
RATE_LIMITED = "bench.guarded_rate"
DENSE_RATE = "200/s"
BREAKER_TASKS = ("bench.guarded_slot", "bench.guarded_slot_breaker", "bench.guarded_breaker")
#: Time for the last admitted task to finish after its message was acknowledged.
SETTLE = 0.5


def _run_batch(app: Celery, context: Context, queue: str, tasks: int, task: str = GUARDED) -> None:
    broker = context.client()
    publish(app, task, tasks, queue)
    wait_until_drained(broker, queue)
    time.sleep(SETTLE)
    broker.close()


def _background(counted: Counted) -> str:
    """The note on the timer's round trips left out of the per-task figure."""
    listed = ", ".join(f"{n} {name}" for name, n in sorted(counted.background.items()))
    return f"; not per task, left out: {listed}" if listed else ""


def run(context: Context) -> list[BenchResult]:
    tasks, dense = (200, 100) if context.quick else (1000, 400)
    warm = 100
    broker_url = context.server.url
    queue = context.unique(NAME)
    key = context.unique(f"{NAME}-starts")
    app = client_app(broker_url)
    broker = context.client()
    with RedisServer() as state:
        options = worker_options(
            broker_url, state_url=state.url, prefix=context.unique(NAME), rate=DENSE_RATE
        )
        worker = WorkerProcess(APP, concurrency=2, queues=[queue], **options)
        try:
            with counting(state.url) as setup:
                worker.start()
                _run_batch(app, context, queue, warm)
            with counting(state.url, BACKGROUND) as never_denied:
                _run_batch(app, context, queue, tasks)
            with counting(state.url, BACKGROUND) as denied:
                publish(app, RATE_LIMITED, dense, queue, args=(key,))
                wait_for_starts(broker, key, dense)
                time.sleep(SETTLE)
            guarded = {}
            for name in (
                "bench.guarded_slot",
                "bench.guarded_slot_breaker",
                "bench.guarded_breaker",
            ):
                with counting(state.url, BACKGROUND) as counted:
                    _run_batch(app, context, queue, tasks, name)
                guarded[name] = counted
        finally:
            worker.stop()
    starts = read_starts(broker, key)
    deferred = sum(1 for start in starts if start.deferrals)
    runs = sum(start.deferrals + 1 for start in starts)  # each deferral ends one run
    broker.delete(key)
    broker.close()
    app.close()

    # The worker's start-up and first connections, without the warm-up tasks' own share.
    startup = setup.without(never_denied, warm / tasks)
    per_task = never_denied.round_trips / tasks
    per_dense_task = denied.round_trips / dense
    per_dense_run = denied.round_trips / runs
    rows = [
        Row(
            "never-denied RateLimit",
            per_task,
            "RT/task",
            f"{never_denied.describe(tasks)}; none at the end ({tasks} tasks)"
            f"{_background(never_denied)}",
        ),
        Row(
            f'RateLimit("{DENSE_RATE}"), 2 s of tasks queued',
            per_dense_task,
            "RT/task",
            f"{denied.describe(dense)}; {deferred} of {dense} deferred, {runs} runs"
            f"{_background(denied)}",
        ),
        Row(
            "  same, per run (a deferral ends a run)",
            per_dense_run,
            "RT/run",
            "a run on time for its reserved slot makes no call",
        ),
        Row(
            "once per worker start (main + 2 pool processes)",
            startup.round_trips,
            "RT",
            startup.describe(1),
            decimals=0,
        ),
    ]
    goal = Goal(
        "at most 1 round trip per run (at start; none at the end for rate limits)",
        per_task <= 1.0 and per_dense_run <= 1.0,
        max(per_task, per_dense_run),
    )
    details = {
        "tasks": tasks,
        "dense_tasks": dense,
        "dense_deferred": deferred,
        "dense_runs": runs,
        "never_denied": never_denied.describe(tasks),
        "dense": denied.describe(dense),
        "worker_startup": startup.describe(1),
        "never_denied_commandstats": {n: s.calls for n, s in never_denied.stats.items()},
        "dense_commandstats": {n: s.calls for n, s in denied.stats.items()},
    }
    return [
        BenchResult(NAME, TITLE, rows, goal, details),
        _breaker_result(guarded, tasks),
        slot_calls(context),
    ]


def _breaker_result(counted: dict[str, Any], tasks: int) -> BenchResult:
    slot = counted["bench.guarded_slot"].round_trips / tasks
    both = counted["bench.guarded_slot_breaker"].round_trips / tasks
    alone = counted["bench.guarded_breaker"].round_trips / tasks
    rows = [
        Row("Concurrency cap", slot, "RT/task", counted["bench.guarded_slot"].describe(tasks)),
        Row(
            "Concurrency cap + CircuitBreaker",
            both,
            "RT/task",
            counted["bench.guarded_slot_breaker"].describe(tasks),
        ),
        Row(
            "CircuitBreaker alone",
            alone,
            "RT/task",
            counted["bench.guarded_breaker"].describe(tasks),
        ),
    ]
    # A heartbeat renewal or a script load now and then lands in a batch (a few per
    # thousand tasks); a round trip of the breaker's own would add 1.00 per task.
    added = both - slot
    goal = Goal("a breaker guard adds no round trip (< 0.05 RT/task)", added < 0.05, added)
    return BenchResult("breakerrt", "round trips a CircuitBreaker guard adds to a task", rows, goal)
