"""How fast a rate limit set at run time reaches every worker (``Client.set_limit``).

Two ``celery worker`` processes (prefork ``-c 2``) run ``bench.live_limit`` under a steady
offer of ``OFFER_RATE`` tasks/s. Its limiter, ``RateLimit("1000/s", burst=100)``, never
denies at that load, so before the change no task is denied. Each repetition sends the
tasks to a fresh bucket, then lowers the limiter to ``NEW_RATE`` (burst 1) with
``Client.set_limit``, reading Redis ``TIME`` just before the call. From then on one task a
second passes and the others are denied. Each pool process records every denial of the
limiter with Redis ``TIME`` (a ``guard_denied`` receiver, right after the admission
script refused), so for each worker:

    delay = (its first denial on the bucket after the set) - (TIME before the set)

A denial can only come from the new rate, so this is an upper bound of the time until
the worker decided on it: it also counts the wait for the worker's next task (about
``2 / OFFER_RATE`` s per worker) and, for the worker whose first task after the set took
the one token the new rate allows, one more task. The figure is the largest delay over
the workers, median over the repetitions. A denied task is dropped (``max_deferrals``
0, ``on_deferral_exhausted: "drop"``), so no deferred task comes back to load the
workers while a later repetition measures. As a check that no worker kept deciding on
the old rate, the tasks started from Redis ``TIME`` just after the call until a second
after the one just before it are counted: the new rate lets one through (a task
admitted just before the set may start just after it, its start being recorded a few
milliseconds after its admission). The rate is cleared after each repetition.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import redis

import taskguard
from taskguard.testing import worker_fleet

from .celeryrun import APP, client_app, redis_time, worker_options
from .harness import BenchResult, Context, Goal, Row, median

NAME = "limitchange"
TITLE = "a rate limit set at run time reaches every worker (2 workers x prefork -c2)"

WORKERS = 2
CONCURRENCY = 2
LIMITER = "bench-live-limit"  # benchmarks.celeryapp.LIVE_LIMIT
TASK = "bench.live_limit"
OFFER_RATE = 40.0
NEW_RATE = "1/s"
GOAL_SECONDS = 1.0
#: Starts are recorded a few milliseconds after their admission: wait this long past the
#: second after the set before counting them.
GRACE = 0.2
#: Seconds a repetition waits for every worker's first denial before it gives up.
PATIENCE = 10.0


class _Offer(threading.Thread):
    """Publishes ``TASK`` at ``OFFER_RATE``/s, evenly spaced, to the current bucket."""

    def __init__(self, broker_url: str, queue: str) -> None:
        super().__init__(name="tgbench-offer", daemon=True)
        self.app = client_app(broker_url)
        self.queue = queue
        self.bucket = "warm-up"
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.app.producer_or_acquire() as producer:
            due = time.monotonic()
            while not self.stopping.is_set():
                self.app.send_task(TASK, args=(self.bucket,), queue=self.queue, producer=producer)
                due += 1 / OFFER_RATE
                self.stopping.wait(max(due - time.monotonic(), 0.0))

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.app.close()


def _records(client: redis.Redis, key: str) -> list[tuple[float, str, str]]:
    out = []
    for raw in client.lrange(key, 0, -1):
        at, node, where = raw.decode().split(" ", 2)
        out.append((float(at), node, where))
    return out


def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.01)


def _repetition(
    client: redis.Redis, tg: taskguard.Client, offer: _Offer, prefix: str, rep: int
) -> tuple[dict[str, float], int]:
    """One change: per worker, seconds from the set to its first denial at the new rate;
    and how many tasks started in the second after the set (the new rate allows one)."""
    bucket = f"rep{rep}"
    offer.bucket = bucket
    starts, denials = f"{prefix}:live-starts", f"{prefix}:live-denials"

    def nodes_started() -> set[str]:
        return {node for _, node, b in _records(client, starts) if b == bucket}

    _wait("both workers running the new bucket", lambda: len(nodes_started()) >= WORKERS, 20)
    nodes = nodes_started()
    if any(where.endswith(f":{bucket}") for _, _, where in _records(client, denials)):
        raise RuntimeError(f"{bucket}: denied before the limit was lowered")
    before = redis_time(client)
    tg.set_limit(LIMITER, NEW_RATE, burst=1)
    after = redis_time(client)  # the HSET landed between the two

    def first_denials() -> dict[str, float]:
        first: dict[str, float] = {}
        for at, node, where in _records(client, denials):
            if where.endswith(f":{bucket}") and at >= before:
                first[node] = min(first.get(node, at), at)
        return first

    try:
        _wait(
            f"{bucket}: a denial on every worker", lambda: set(first_denials()) >= nodes, PATIENCE
        )
        _wait("a second after the set", lambda: redis_time(client) > before + 1 + GRACE, 5)
    finally:
        tg.clear_limit(LIMITER)
    passed = sum(
        1 for at, _, b in _records(client, starts) if b == bucket and after <= at < before + 1
    )
    return {node: at - before for node, at in first_denials().items()}, passed


def run(context: Context) -> BenchResult:
    load = os.getloadavg()
    repetitions = 3 if context.quick else 7
    queue = context.unique(f"{NAME}-queue")
    prefix = context.unique(NAME)
    client = context.client()
    tg = taskguard.connect(context.server.url, prefix=prefix)
    options = worker_options(context.server.url, prefix=prefix)
    offer = _Offer(context.server.url, queue)
    measured: list[tuple[dict[str, float], int]] = []
    try:
        with worker_fleet(APP, WORKERS, concurrency=CONCURRENCY, queues=[queue], **options):
            offer.start()
            measured = [_repetition(client, tg, offer, prefix, rep) for rep in range(repetitions)]
    finally:
        offer.stop()
        tg.close()
        client.delete(queue, f"{prefix}:live-starts", f"{prefix}:live-denials")
        client.close()
    per_rep = [delays for delays, _ in measured]
    passed = [count for _, count in measured]
    worst = [max(delays.values()) for delays in per_rep]
    every = [delay for delays in per_rep for delay in delays.values()]
    typical = median(worst)
    rows = [
        Row(
            "set_limit to the last worker's first denial",
            typical * 1000,
            "ms",
            f"median of {repetitions} changes (max over {WORKERS} workers each); "
            f"worst {max(worst) * 1000:.0f} ms; per worker median {median(every) * 1000:.0f} ms; "
            f"offer {OFFER_RATE:g}/s, 1000/s -> {NEW_RATE}",
            decimals=0,
        ),
        Row(
            "  tasks started in the second after the set",
            max(passed),
            "tasks",
            f"most of {repetitions} changes (each: {' '.join(map(str, passed))}); "
            f"the new rate allows 1, the old one {OFFER_RATE:g} at this offer",
            decimals=0,
        ),
    ]
    goal = Goal(
        f"every worker on the new rate within {GOAL_SECONDS:g} s (median)",
        typical <= GOAL_SECONDS,
        typical,
    )
    details = {
        "load_average_before": load,
        "offer_per_s": OFFER_RATE,
        "new_rate": NEW_RATE,
        "per_repetition_seconds": per_rep,
        "worst_per_repetition_seconds": worst,
        "started_in_the_second_after_the_set": passed,
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
