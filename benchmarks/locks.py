"""(e) Lock acquire+release pairs per second, one client, uncontended, against peers.

Variants (see :mod:`benchmarks.pairs` for the method), all on the same throwaway Redis:

* two ``PING``: the floor for any lock that takes 2 round trips per pair;
* redis-py's ``Lock`` (``SET NX PX``, then a release script): the reference;
* taskguard ``connect(url).lock(name, ttl=30, renew=False)``: ``try_acquire()`` and
  ``lease.release()``, fencing token included (one EVALSHA each way);
* the same with ``renew=True`` (the default): the lease is also registered with, and
  removed from, the process heartbeat, which renews held leases from a thread;
* taskguard's two EVALSHAs sent through its lane (the client under every guard call), no
  guard Python around them;
* python-redis-lock (``GET``, ``SET NX EX``, then a release script);
* pottery's ``Redlock`` with one master (Redlock is meant for several; each call goes
  through a thread pool, one task per master). The pool does not wait for its thread to
  exit, so each pair here does. Even so, starting and stopping threads slowed whichever
  variant ran next by 40-50 µs, and the Python-heavy variants (redis-py's Lock,
  taskguard) by ~20 µs wherever they ran, in trial runs. So pottery is timed apart, in an
  interleave with redis-py's Lock alone; its ratio is to redis-py's time there.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import redis
import redis_lock
from pottery import Redlock

import taskguard
from taskguard import DistributedLock

from .harness import BenchResult, Context, Goal, Row
from .pairs import Call, Measured, Variant, bare_evalsha_pair, measure, ping_pair

NAME = "locks"
TITLE = "lock acquire+release pairs/s, one client, vs redis-py, python-redis-lock, pottery"

TTL = 30
GOAL = 1.0
LOCK = "bench-lock"


def _taskguard_pair(lock: DistributedLock) -> None:
    lease = lock.try_acquire().lease
    if lease is None:
        raise RuntimeError(f"{lock!r} was denied: taskguard's Redis is unreachable or held")
    lease.release()


def _taskguard(renew: bool) -> Any:
    def make(url: str, namespace: str) -> Call:
        lock = taskguard.connect(url, prefix=namespace).lock(LOCK, ttl=TTL, renew=renew)
        return functools.partial(_taskguard_pair, lock)

    return make


def _bare(url: str, namespace: str) -> Call:
    return bare_evalsha_pair(
        url,
        namespace,
        lambda backend: functools.partial(
            _taskguard_pair, taskguard.connect(backend).lock(LOCK, ttl=TTL, renew=False)
        ),
        replies=[[1, 0, 0, 0, 1], [1]],
    )


def _redis_py(url: str, namespace: str) -> Call:
    lock = redis.Redis.from_url(url).lock(f"{namespace}:{LOCK}", timeout=TTL)

    def pair() -> None:
        if not lock.acquire(blocking=False):
            raise RuntimeError("redis-py Lock was denied")
        lock.release()

    return pair


def _python_redis_lock(url: str, namespace: str) -> Call:
    lock = redis_lock.Lock(redis.Redis.from_url(url), f"{namespace}:{LOCK}", expire=TTL)

    def pair() -> None:
        if not lock.acquire(blocking=False):
            raise RuntimeError("python-redis-lock was denied")
        lock.release()

    return pair


def _pottery(url: str, namespace: str) -> Call:
    lock = Redlock(
        key=f"{namespace}:{LOCK}", masters={redis.Redis.from_url(url)}, auto_release_time=TTL
    )

    def pair() -> None:
        if not lock.acquire(blocking=False):
            raise RuntimeError("pottery Redlock was denied")
        lock.release()
        for thread in threading.enumerate():  # the pools' threads: pottery's own cost
            if thread.name.startswith("ThreadPoolExecutor-"):
                thread.join()

    return pair


PING_PAIR = Variant("redis-py 2 x PING (floor for 2 RT)", ping_pair)
REDIS_PY = Variant("redis-py Lock", _redis_py)
TASKGUARD = Variant("taskguard lock, renew=False", _taskguard(renew=False))
TASKGUARD_RENEW = Variant("taskguard lock, renew=True (default)", _taskguard(renew=True))
BARE = Variant("taskguard's 2 EVALSHA via its lane, bare", _bare)
PYTHON_REDIS_LOCK = Variant("python-redis-lock", _python_redis_lock)
POTTERY = Variant("pottery Redlock (1 master)", _pottery)
VARIANTS = (PING_PAIR, REDIS_PY, TASKGUARD, TASKGUARD_RENEW, BARE, PYTHON_REDIS_LOCK)


def rows(measured: Measured, reference: Variant, noun: str) -> list[Row]:
    """One row per variant: pairs/s, ratio to ``reference``, round trips, server time."""
    table = []
    for variant in measured.variants:
        i = measured.index(variant)
        note = ""
        if variant is not reference:
            note = f"{measured.ratio(variant):.3f}x {noun} (parts {measured.spread(variant)}"
            note += ", timed apart); " if variant in measured.isolated else "); "
        note += (
            f"{measured.median_us[i]:.1f} µs/pair; {measured.round_trips(variant):g} RT: "
            f"{measured.commands(variant)}; {measured.server_us[i]:.1f} µs in Redis"
        )
        table.append(Row(variant.label, measured.rate(variant), "pairs/s", note))
    return table


def python_rows(measured: Measured, ours: Variant, renew: Variant, bare: Variant) -> list[Row]:
    """What taskguard's Python adds to its two EVALSHAs, and what the heartbeat adds."""
    us = measured.median_us
    python = us[measured.index(ours)] - us[measured.index(bare)]
    heartbeat = us[measured.index(renew)] - us[measured.index(ours)]
    return [
        Row(
            "taskguard Python per pair",
            python,
            "µs",
            "renew=False pair minus the same 2 EVALSHA through the bare lane",
        ),
        Row(
            "heartbeat registration per pair",
            heartbeat,
            "µs",
            f"renew=True minus renew=False; {measured.round_trips(renew):g} RT per pair "
            "(renewals the heartbeat thread sent meanwhile included)",
        ),
    ]


def run(context: Context) -> BenchResult:
    measured = measure(context, NAME, VARIANTS, reference=REDIS_PY, isolated=[POTTERY])
    ratio = measured.ratio(TASKGUARD)
    round_trips = measured.round_trips(TASKGUARD)
    goal = Goal(
        f"taskguard (renew=False, fencing) ≥ {GOAL} x redis-py Lock, 2 RT",
        ratio >= GOAL and round_trips <= 2.0,
        ratio,
    )
    table = rows(measured, REDIS_PY, "redis-py Lock")
    table += python_rows(measured, TASKGUARD, TASKGUARD_RENEW, BARE)
    return BenchResult(NAME, TITLE, table, goal, measured.details())
