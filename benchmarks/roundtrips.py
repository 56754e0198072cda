"""(d) Round trips per guarded task, counted by the Redis server itself.

taskguard's state lives on a throwaway Redis that nothing else talks to; the broker and
the tasks' start recordings are on another server. ``INFO commandstats`` on the state
server before and after a batch of tasks (less the ``INFO`` calls themselves) gives every
command taskguard sent for them, whatever the client-side code looks like.

Three figures, on one worker (prefork, ``-c 2``):

* once per pool process: what connecting and loading the script costs (warm-up batch);
* a never-denied ``RateLimit``: the admission at start, and nothing at the end, since
  rate-limit tokens are spent rather than held;
* a ``RateLimit("200/s")`` offered twice that: most tasks are denied, reserve their slot
  in that same call, and are re-published; the re-run skips the paid-for bucket.
"""

from __future__ import annotations

import time

import redis
from celery import Celery

from taskguard.testing import WorkerProcess
from taskguard.testing.servers import RedisServer

from .celeryrun import (
    APP,
    client_app,
    publish,
    read_starts,
    wait_for_starts,
    wait_until_drained,
    worker_options,
)
from .harness import (
    BenchResult,
    CommandStat,
    Context,
    Goal,
    Row,
    command_stats,
    commands_between,
    counting_commands,
    describe_commands,
)

NAME = "roundtrips"
TITLE = "Redis commands per guarded task, counted on a state-only server"

GUARDED = "bench.guarded_noop"
RATE_LIMITED = "bench.guarded_rate"
DENSE_RATE = "200/s"
#: Time for the last admitted task to finish after its message was acknowledged.
SETTLE = 0.5


def _total(counted: dict[str, CommandStat]) -> int:
    return sum(stat.calls for stat in counted.values())


def _drain(app: Celery, context: Context, queue: str, tasks: int) -> None:
    broker = context.client()
    publish(app, GUARDED, tasks, queue)
    wait_until_drained(broker, queue)
    time.sleep(SETTLE)
    broker.close()


def run(context: Context) -> BenchResult:
    tasks = 200 if context.quick else 1000
    dense = 100 if context.quick else 400
    warm = 100
    broker_url = context.redis.url
    queue = context.unique(NAME)
    key = context.unique(f"{NAME}-starts")
    app = client_app(broker_url)
    broker = context.client()
    with RedisServer() as state:
        admin = redis.Redis.from_url(state.url)
        options = worker_options(
            broker_url, state_url=state.url, prefix=context.unique(NAME), rate=DENSE_RATE
        )
        before_start = command_stats(admin)
        with WorkerProcess(APP, concurrency=2, queues=[queue], **options):
            _drain(app, context, queue, warm)
            setup = commands_between(before_start, command_stats(admin))
            with counting_commands(admin) as never_denied:
                _drain(app, context, queue, tasks)
            with counting_commands(admin) as denied:
                publish(app, RATE_LIMITED, dense, queue, args=(key,))
                wait_for_starts(broker, key, dense)
                time.sleep(SETTLE)
        admin.close()
    deferred = sum(1 for start in read_starts(broker, key) if start.deferrals)
    broker.delete(key)
    broker.close()
    app.close()

    # The warm-up's own admissions are per task, not per process.
    setup_once = dict(setup)
    if "evalsha" in setup_once:
        stat = setup_once["evalsha"]
        setup_once["evalsha"] = CommandStat(stat.calls - warm, stat.usec)
    setup_once = {name: stat for name, stat in setup_once.items() if stat.calls}
    per_task = _total(never_denied) / tasks
    per_dense_task = _total(denied) / dense
    rows = [
        Row(
            "never-denied RateLimit, per task",
            per_task,
            "cmd/task",
            f"{describe_commands(never_denied, tasks)} over {tasks} tasks; 0 at the end",
        ),
        Row(
            f'RateLimit("{DENSE_RATE}") at 2x offered, per task',
            per_dense_task,
            "cmd/task",
            f"{describe_commands(denied, dense)}; {deferred} of {dense} deferred with a "
            "reserved slot, re-run without a call",
        ),
        Row(
            "once per pool process (2 processes)",
            _total(setup_once) / 2,
            "commands",
            describe_commands(setup_once, 2) or "none",
        ),
    ]
    goal = Goal(
        "1 command per task (at start; rate limits need none at the end)",
        per_task <= 1.0 and per_dense_task <= 1.0,
        max(per_task, per_dense_task),
    )
    details = {
        "tasks": tasks,
        "dense_tasks": dense,
        "dense_deferred": deferred,
        "never_denied": {name: stat.calls for name, stat in never_denied.items()},
        "dense": {name: stat.calls for name, stat in denied.items()},
        "setup_two_processes": {name: stat.calls for name, stat in setup_once.items()},
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
