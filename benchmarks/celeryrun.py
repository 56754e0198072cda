"""Driving real ``celery worker`` processes: environment, publishing, waiting, recordings.

The workers run :mod:`benchmarks.celeryapp`; this process only publishes by task name
(``send_task``), so it never imports the workers' configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypedDict

import redis
from celery import Celery

from .harness import REPO_ROOT

__all__ = [
    "APP",
    "Start",
    "WorkerOptions",
    "client_app",
    "publish",
    "read_starts",
    "redis_time",
    "wait_for_starts",
    "wait_until_drained",
    "wait_until_taken",
    "worker_options",
]

#: The ``-A`` argument of every benchmark worker.
APP = "benchmarks.celeryapp"


class WorkerOptions(TypedDict):
    """Keyword arguments for :class:`~taskguard.testing.WorkerProcess` running :data:`APP`."""

    env: dict[str, str]
    cwd: str


def worker_options(
    broker_url: str,
    *,
    prefix: str,
    state_url: str | None = None,
    rate: str | None = None,
    record_url: str | None = None,
) -> WorkerOptions:
    """How to start a worker of :data:`APP` (see :mod:`benchmarks.celeryapp`)."""
    env = {"TG_BENCH_BROKER_URL": broker_url, "TG_BENCH_PREFIX": prefix}
    if state_url is not None:
        env["TG_BENCH_STATE_URL"] = state_url
    if record_url is not None:
        env["TG_BENCH_RECORD_URL"] = record_url
    if rate is not None:
        env["TG_BENCH_RATE"] = rate
    return {"env": env, "cwd": str(REPO_ROOT)}


def client_app(broker_url: str) -> Celery:
    """A Celery app that only publishes to ``broker_url``."""
    app = Celery("tgbench-client", broker=broker_url, set_as_current=False)
    app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
    return app


def publish(
    app: Celery, task_name: str, count: int, queue: str, args: tuple[object, ...] = ()
) -> None:
    """Publish ``count`` messages for ``task_name`` to ``queue`` over one producer."""
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(task_name, args=args, queue=queue, producer=producer)


def wait_until_taken(client: redis.Redis, queue: str, count: int, timeout: float = 30.0) -> float:
    """Wait until a worker takes the first of ``count`` queued messages; return when.

    Returns:
        :func:`time.perf_counter` at the first poll that saw fewer than ``count``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen(queue) < count:
            return time.perf_counter()
        time.sleep(0.001)
    raise TimeoutError(f"no worker took a message from {queue!r} within {timeout}s")


def wait_until_drained(
    client: redis.Redis, queue: str, timeout: float = 120.0, poll: float = 0.005
) -> float:
    """Wait until ``queue`` is empty and every delivered message is acknowledged.

    With the default ``acks_late=False`` a message is acknowledged when a pool process
    starts it, so the last task or two may still be running: well under a millisecond
    for a no-op. Only meaningful on a broker no one else uses (the ``unacked`` hash of
    Celery's Redis transport is shared by every queue of the database).

    Returns:
        :func:`time.perf_counter` at the first poll that found both empty.
    """
    deadline = time.monotonic() + timeout
    pipe = client.pipeline(transaction=False)
    while time.monotonic() < deadline:
        pipe.llen(queue)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        if queued == 0 and unacked == 0:
            return time.perf_counter()
        time.sleep(poll)
    raise TimeoutError(f"{queue!r} not drained within {timeout}s")


@dataclass(frozen=True)
class Start:
    """A task start recorded by :mod:`benchmarks.celeryapp`.

    Attributes:
        at: Redis ``TIME`` when the task body began, in seconds.
        deferrals: How many times taskguard had deferred this message before.
    """

    at: float
    deferrals: int


def read_starts(client: redis.Redis, key: str) -> list[Start]:
    """The starts recorded under ``key``, in time order."""
    starts = []
    for raw in client.lrange(key, 0, -1):
        at, deferrals = (raw if isinstance(raw, str) else raw.decode()).split()
        starts.append(Start(float(at), int(deferrals)))
    return sorted(starts, key=lambda start: start.at)


def redis_time(client: redis.Redis) -> float:
    """The server's clock (``TIME``), in seconds."""
    seconds, micros = client.time()
    return float(seconds + micros / 1_000_000)


def wait_for_starts(client: redis.Redis, key: str, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` starts are recorded under ``key``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen(key) >= count:
            return
        time.sleep(0.02)
    raise TimeoutError(f"only {client.llen(key)} of {count} starts recorded after {timeout}s")
