"""(f) Lock wake latency: a holder releases; how soon does a blocked waiter hold the lock?

Method in :mod:`benchmarks.handoff`: two processes, one lock, hand-offs timed from the
start of the holder's release call to the waiter's acquire returning. Each library runs
with its defaults:

* taskguard ``lock(name, ttl=30).acquire(timeout=10)``: a denied attempt blocks on the
  lock's wake-up list (BLPOP); the release script pushes to it;
* python-redis-lock ``Lock(conn, name, expire=30).acquire(timeout=10)``: the same idea
  (BLPOP on a signal list its release script pushes to);
* redis-py ``Lock(name, timeout=30).acquire(blocking_timeout=10)``: polls with
  ``SET NX`` every ``sleep=0.1`` s;
* the floor for any wake-on-release design: no lock at all, the holder's "release" is one
  ``LPUSH`` and the waiter's "acquire" one ``BLPOP``, by bare redis-py.
"""

from __future__ import annotations

import redis
import redis_lock

import taskguard
from taskguard import HeldLease

from .handoff import Handoff, Latencies, measure
from .harness import BenchResult, Context, Goal, Row

NAME = "lockwake"
TITLE = "lock wake latency, release -> blocked waiter acquired, 2 processes"

TTL = 30
WAIT = 10.0
#: taskguard's p50 at most this many times python-redis-lock's, measured in the same run.
P50_GOAL_RATIO = 1.0
P99_GOAL_MS = 2.0
LOCK = "bench-wake"


class TaskguardSide:
    def __init__(self, url: str, namespace: str, role: str) -> None:
        self.lock = taskguard.connect(url, prefix=namespace).lock(LOCK, ttl=TTL)

    def take(self) -> HeldLease:
        return self.lock.acquire(timeout=WAIT)

    wait = take

    def give(self, held: HeldLease) -> None:
        held.release()

    def close(self) -> None:
        pass


class RedisPySide:
    def __init__(self, url: str, namespace: str, role: str) -> None:
        self.lock = redis.Redis.from_url(url).lock(f"{namespace}:{LOCK}", timeout=TTL)

    def take(self) -> None:
        if not self.lock.acquire(blocking_timeout=WAIT):
            raise TimeoutError("redis-py Lock not acquired")

    wait = take

    def give(self, held: None) -> None:
        self.lock.release()

    def close(self) -> None:
        pass


class PythonRedisLockSide:
    def __init__(self, url: str, namespace: str, role: str) -> None:
        self.lock = redis_lock.Lock(redis.Redis.from_url(url), f"{namespace}:{LOCK}", expire=TTL)

    def take(self) -> None:
        if not self.lock.acquire(timeout=WAIT):
            raise TimeoutError("python-redis-lock not acquired")

    wait = take

    def give(self, held: None) -> None:
        self.lock.release()

    def close(self) -> None:
        pass


class BlpopFloorSide:
    def __init__(self, url: str, namespace: str, role: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.key = f"{namespace}:{LOCK}"
        self.holder = role == "holder"

    def take(self) -> None:
        return None

    def wait(self) -> None:
        if not self.client.blpop([self.key], timeout=WAIT):
            raise TimeoutError("nothing pushed")

    def give(self, held: None) -> None:
        if self.holder:
            self.client.lpush(self.key, "1")

    def close(self) -> None:
        self.client.delete(self.key)


TASKGUARD = Handoff("taskguard lock (BLPOP wake-up)", TaskguardSide)
PYTHON_REDIS_LOCK = Handoff("python-redis-lock (BLPOP signal)", PythonRedisLockSide)
REDIS_PY = Handoff("redis-py Lock (polls every 100 ms)", RedisPySide)
FLOOR = Handoff("floor: bare LPUSH -> BLPOP, no lock", BlpopFloorSide)
VARIANTS = (TASKGUARD, PYTHON_REDIS_LOCK, REDIS_PY, FLOOR)


def latency_rows(results: list[Latencies], ours: str) -> list[Row]:
    table = []
    mine = next(r for r in results if r.label == ours)
    for result in results:
        note = f"p99 {result.p99:.2f} ms; max {max(result.ms):.2f} ms; {len(result.ms)} handoffs"
        if result.label != ours:
            note += f"; p50 {result.p50 / mine.p50:.1f}x taskguard's"
        table.append(Row(f"{result.label}, p50", result.p50, "ms", note, decimals=3))
    return table


def latency_goal(result: Latencies, peer: Latencies) -> Goal:
    """p50 ≤ ``P50_GOAL_RATIO`` x the peer's p50 (same run), and p99 ≤ ``P99_GOAL_MS``."""
    ratio = result.p50 / peer.p50
    return Goal(
        f"taskguard p50 ≤ {P50_GOAL_RATIO:g} x python-redis-lock's and p99 ≤ {P99_GOAL_MS:g} ms",
        ratio <= P50_GOAL_RATIO and result.p99 <= P99_GOAL_MS,
        ratio,
    )


def run(context: Context) -> BenchResult:
    results = measure(context, NAME, VARIANTS)
    ours = results[VARIANTS.index(TASKGUARD)]
    peer = results[VARIANTS.index(PYTHON_REDIS_LOCK)]
    details = {result.label: result.summary() for result in results}
    return BenchResult(
        NAME, TITLE, latency_rows(results, TASKGUARD.label), latency_goal(ours, peer), details
    )
