"""(g) Concurrency-slot acquire+release pairs per second, one client, against Dramatiq.

Variants (see :mod:`benchmarks.pairs` for the method), all on the same throwaway Redis,
with ``limit=10`` slots so that a lone client is never refused:

* two ``PING``: the floor for any semaphore that takes 2 round trips per pair;
* Dramatiq's ``ConcurrentRateLimiter`` on its ``RedisBackend``: the reference. A counter
  under optimistic locking: ``SET NX`` (refused once the key exists), then ``WATCH``,
  ``GET`` and a ``MULTI``/``SET``/``EXEC`` transaction to increment, and the same again to
  decrement on release;
* taskguard ``connect(url).semaphore(name, limit=10, ttl=60, renew=False)``:
  ``try_acquire()`` and ``lease.release()`` (one EVALSHA each way; a slot is a lease in a
  sorted set, so a crashed holder's slot comes back by itself);
* the same with ``renew=True`` (the default: the heartbeat renews held slots);
* taskguard's two EVALSHAs sent through its lane (the client under every guard call), no
  guard Python around them.
"""

from __future__ import annotations

import functools
from typing import Any

import redis
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import RedisBackend as DramatiqRedisBackend

import taskguard
from taskguard import Semaphore

from .harness import BenchResult, Context, Goal
from .locks import python_rows, rows
from .pairs import Call, Variant, bare_evalsha_pair, measure, ping_pair

NAME = "semaphore"
TITLE = "semaphore slot acquire+release pairs/s, one client, vs Dramatiq"

LIMIT = 10
TTL = 60
GOAL = 3.0
SEMAPHORE = "bench-semaphore"


def _taskguard_pair(semaphore: Semaphore) -> None:
    lease = semaphore.try_acquire().lease
    if lease is None:
        raise RuntimeError(f"{semaphore!r} was denied: taskguard's Redis is unreachable")
    lease.release()


def _taskguard(renew: bool) -> Any:
    def make(url: str, namespace: str) -> Call:
        backend = taskguard.connect(url, prefix=namespace).backend
        semaphore = taskguard.connect(backend).semaphore(
            SEMAPHORE, limit=LIMIT, ttl=TTL, renew=renew
        )
        return functools.partial(_taskguard_pair, semaphore)

    return make


def _bare(url: str, namespace: str) -> Call:
    return bare_evalsha_pair(
        url,
        namespace,
        lambda backend: functools.partial(
            _taskguard_pair,
            taskguard.connect(backend).semaphore(SEMAPHORE, limit=LIMIT, ttl=TTL, renew=False),
        ),
        replies=[[1, 0, 0, 0, 0], [1]],
    )


def _dramatiq(url: str, namespace: str) -> Call:
    backend = DramatiqRedisBackend(client=redis.Redis.from_url(url))
    limiter = ConcurrentRateLimiter(
        backend, f"{namespace}:{SEMAPHORE}", limit=LIMIT, ttl=TTL * 1000
    )

    def pair() -> None:
        with limiter.acquire(raise_on_failure=True):
            pass

    return pair


PING_PAIR = Variant("redis-py 2 x PING (floor for 2 RT)", ping_pair)
DRAMATIQ = Variant("Dramatiq ConcurrentRateLimiter", _dramatiq)
TASKGUARD = Variant("taskguard semaphore, renew=False", _taskguard(renew=False))
TASKGUARD_RENEW = Variant("taskguard semaphore, renew=True (default)", _taskguard(renew=True))
BARE = Variant("taskguard's 2 EVALSHA via its lane, bare", _bare)
VARIANTS = (PING_PAIR, DRAMATIQ, TASKGUARD, TASKGUARD_RENEW, BARE)


def run(context: Context) -> BenchResult:
    measured = measure(context, NAME, VARIANTS, reference=DRAMATIQ)
    ratio = measured.ratio(TASKGUARD)
    goal = Goal(f"taskguard (renew=False) ≥ {GOAL:g} x Dramatiq", ratio >= GOAL, ratio)
    table = rows(measured, DRAMATIQ, "Dramatiq")
    table += python_rows(measured, TASKGUARD, TASKGUARD_RENEW, BARE)
    return BenchResult(NAME, TITLE, table, goal, measured.details())
