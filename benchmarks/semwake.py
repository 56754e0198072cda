"""(h) Semaphore wake latency: a slot is released; how soon does a blocked waiter hold it?

Method in :mod:`benchmarks.handoff`. taskguard ``semaphore(name, limit=2, ttl=60)``, with
its defaults (``renew=True``): the holder process keeps one slot for the whole run and
hands the other one over, so the waiter blocks on a full semaphore (two holders), not on
what is in effect a lock. ``acquire(timeout=10)`` blocks on the semaphore's wake-up list
(BLPOP); a release pushes to it. Dramatiq's ``ConcurrentRateLimiter`` has no blocking
acquire (a refused caller raises or skips); the peer is python-redis-lock's lock, timed
in the same interleave (a slot handed over is a lock handed over, for the waiter).
"""

from __future__ import annotations

import taskguard
from taskguard import HeldLease

from .handoff import Handoff, measure
from .harness import BenchResult, Context
from .lockwake import PYTHON_REDIS_LOCK, latency_goal, latency_rows

NAME = "semwake"
TITLE = "semaphore wake latency, release -> blocked waiter acquired, limit 2, 2 processes"

LIMIT = 2
TTL = 60
WAIT = 10.0
SEMAPHORE = "bench-wake"


class TaskguardSide:
    def __init__(self, url: str, namespace: str, role: str) -> None:
        backend = taskguard.connect(url, prefix=namespace).backend
        self.semaphore = taskguard.connect(backend).semaphore(SEMAPHORE, limit=LIMIT, ttl=TTL)
        # The holder keeps LIMIT - 1 slots throughout: the handed-over one is the last.
        self.kept = [self.take() for _ in range(LIMIT - 1)] if role == "holder" else []

    def take(self) -> HeldLease:
        return self.semaphore.acquire(timeout=WAIT)

    wait = take

    def give(self, held: HeldLease) -> None:
        held.release()

    def close(self) -> None:
        for held in self.kept:
            held.release()


TASKGUARD = Handoff(f"taskguard semaphore (limit {LIMIT}, BLPOP)", TaskguardSide)
VARIANTS = (TASKGUARD, PYTHON_REDIS_LOCK)


def run(context: Context) -> BenchResult:
    ours, peer = measure(context, NAME, VARIANTS)
    details = {result.label: result.summary() for result in (ours, peer)}
    rows = latency_rows([ours, peer], TASKGUARD.label)
    return BenchResult(NAME, TITLE, rows, latency_goal(ours, peer), details)
