"""(d), on a cluster: script calls per guarded task when guard state spreads over slots.

Part of the round-trip benchmark (:mod:`benchmarks.roundtrips`). One worker (prefork,
``-c 2``) keeps its guard state on a 3-master cluster started here, and runs three tasks
with keyed guards, each message for its own customer and document (so over many slots):

* ``keyed_pair``: ``RateLimit`` and ``Concurrency`` both keyed by the customer: one slot,
  so one admission call, and one release call (the slot);
* ``keyed_spread``: the customer's ``RateLimit`` and a ``Lock`` keyed by the document: two
  slots, so two admission calls (in slot order), and one release call (the lock);
* ``keyed_tagged``: the same lock with ``tag="{customer}"``: one slot again.

``CONFIG RESETSTAT`` on every master before each batch, then ``INFO commandstats``: the
``EVALSHA`` calls of all masters per task. A heartbeat renewal may add a few.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from taskguard.testing import WorkerProcess
from taskguard.testing.topologies import RedisCluster

from .celeryrun import APP, client_app, wait_until_drained, worker_options
from .harness import BenchResult, Context, Goal, Row

RESULT = "slotrt"
TASKS = ("bench.keyed_pair", "bench.keyed_spread", "bench.keyed_tagged")
#: The script calls each task should make: admission per slot + one release.
EXPECTED = {"bench.keyed_pair": 2.0, "bench.keyed_spread": 3.0, "bench.keyed_tagged": 2.0}
SETTLE = 0.5


def evalsha_per_master(ports: list[int], *, reset: bool = False) -> dict[int, int]:
    """``EVALSHA`` calls per master since the last reset (``reset``: reset them now)."""
    counts = {}
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            if reset:
                client.config_resetstat()
            stats: dict[str, Any] = client.info("commandstats")
        finally:
            client.close()
        counts[port] = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return counts


def slot_calls(context: Context) -> BenchResult:
    tasks = 200 if context.quick else 1000
    broker_url = context.server.url
    queue = context.unique(RESULT)
    app = client_app(broker_url)
    broker = context.client()
    per_task: dict[str, float] = {}
    try:
        with RedisCluster() as cluster:
            masters = cluster.master_ports()
            options = worker_options(
                broker_url, prefix=context.unique(RESULT), state_url=cluster.url
            )
            with WorkerProcess(APP, concurrency=2, queues=[queue], **options):
                for name in TASKS:
                    _batch(app, broker, queue, name, 50, tag="warm")  # connections, scripts
                    evalsha_per_master(masters, reset=True)
                    _batch(app, broker, queue, name, tasks, tag=name)
                    per_task[name] = sum(evalsha_per_master(masters).values()) / tasks
    finally:
        broker.close()
        app.close()
    rows = [
        Row(f"{name.removeprefix('bench.')}", per_task[name], "calls/task",
            f"expected {EXPECTED[name]:.0f}: admission per slot + release")
        for name in TASKS
    ]  # fmt: skip
    worst = max(per_task[name] - EXPECTED[name] for name in TASKS)
    goal = Goal("one admission call per slot, one release (< 0.05 extra per task)",
                worst < 0.05, worst)  # fmt: skip
    return BenchResult(
        RESULT,
        "script calls per task, guard state on a 3-master cluster (keyed guards)",
        rows,
        goal,
        details={"tasks": tasks, "calls_per_task": per_task},
    )


def _batch(app: Any, broker: redis.Redis, queue: str, task: str, count: int, *, tag: str) -> None:
    with app.producer_or_acquire() as producer:
        for index in range(count):
            app.send_task(task, args=(f"c-{tag}-{index}", f"d-{tag}-{index}"), queue=queue,
                          producer=producer)  # fmt: skip
    wait_until_drained(broker, queue)
    time.sleep(SETTLE)
