"""The example project docker-compose.yml runs: guarded tasks and a write-behind cache.

Configured from the environment, as in a container:

- ``CELERY_BROKER_URL``: the broker (also guard state unless ``TASKGUARD_REDIS_URL``);
- ``TASKGUARD_REDIS_URL``: where guard state and the write-behind queue live;
- ``TASKGUARD_DB_URL``: the database the drain pool writes cached values to;
- ``TASKGUARD_PREFIX``: the key prefix (default ``tg``) of everything taskguard writes.

Run a worker (which also drains the write-behind queue into the database)::

    celery -A proj worker -l INFO
"""

from __future__ import annotations

import functools
import os

from celery import Celery

import taskguard
from taskguard import CircuitBreaker, Concurrency, GuardedTask, RateLimit

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
REDIS_URL = os.environ.get("TASKGUARD_REDIS_URL", BROKER_URL)
DB_URL = os.environ.get("TASKGUARD_DB_URL", "sqlite:///taskguard-example.db")
PREFIX = os.environ.get("TASKGUARD_PREFIX", "tg")

app = Celery("proj", broker=BROKER_URL)
app.conf.taskguard = {
    "redis_url": REDIS_URL,
    "key_prefix": PREFIX,
    "tasks": {"proj.send_*": {"rate_limit": "10/s"}},
    # Every worker drains the write-behind queue into the database (partition leases
    # share the work); `taskguard drain` does the same as a service of its own.
    "drain": {"enabled": True, "store": DB_URL, "namespaces": ["readings"]},
}


@functools.cache
def readings() -> taskguard.CacheService:
    """This worker process's write-behind cache of sensor readings (built on first use,
    so after the pool forks)."""
    from taskguard.sinks import SQLStore

    return taskguard.connect(REDIS_URL, prefix=PREFIX).cache(
        "readings", strategy="write-behind", ttl=3600, store=SQLStore(DB_URL)
    )


@app.task(base=GuardedTask)
def send_sms(number: str, text: str) -> None:
    """Rate-limited to 10/s across every worker by the ``tasks`` setting above."""


@app.task(base=GuardedTask, guards=[CircuitBreaker("partner-api", failure_rate=0.5, window=20)])
def call_partner(order_id: int) -> None:
    """Stops calling the partner, fleet-wide, while it fails; queued calls wait."""


@app.task(base=GuardedTask, guards=[Concurrency(5), RateLimit("100/s")])
def record_reading(sensor: str, value: float) -> None:
    """Answers as soon as Redis has the reading; the drain pool writes it to the database."""
    readings().set(sensor, {"value": value})
