"""Tasks refused by a concurrency cap or a lock, with default settings: they park.

Configured from the environment like :mod:`tests.integration.apps.guarded`
(``TG_BROKER_URL``, ``TG_RESULT_URL`` (defaults to the broker), ``TASKGUARD_REDIS_URL``,
``TG_PREFIX``, ``TG_QUEUE``, ``TG_SETTINGS``). Each run records its id, start and end
(Redis server time), ``request.retries`` and the deferral count its message carried.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from taskguard import Concurrency, Debounce, GuardedTask, Lock, RateLimit

BROKER = os.environ["TG_BROKER_URL"]
RESULTS = os.environ.get("TG_RESULT_URL", BROKER)
PREFIX = os.environ["TG_PREFIX"]

app = Celery("parked", broker=BROKER, backend=RESULTS, set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TG_QUEUE"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
)
app.conf.taskguard = {"key_prefix": PREFIX, **json.loads(os.environ.get("TG_SETTINGS", "{}"))}

_records = redis.Redis.from_url(RESULTS)


def _now() -> float:
    seconds, micros = _records.time()
    return float(seconds + micros / 1e6)


def _run(task: Any, seconds: float, **fields: Any) -> None:
    request = task.request
    start = _now()
    time.sleep(seconds)
    _records.rpush(
        f"{PREFIX}:runs",
        json.dumps(
            {
                "id": request.id,
                "name": task.name.rsplit(".", 1)[-1],
                "start": start,
                "end": _now(),
                "retries": request.retries,
                "deferrals": (request.headers or {}).get("taskguard-deferrals", 0),
                "pid": os.getpid(),
                "worker": request.hostname,
                **fields,
            }
        ),
    )


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Concurrency(2, name="park2")])
def slot2(self: Any, i: int, seconds: float) -> int:
    _run(self, seconds, i=i)
    return i


@app.task(
    shared=False, bind=True, base=GuardedTask, guards=[Concurrency(1, ttl=3, name="park-crash")]
)
def crash_slot(self: Any, i: int, seconds: float) -> int:
    _records.rpush(
        f"{PREFIX}:started", json.dumps({"id": self.request.id, "i": i, "pid": os.getpid()})
    )
    _run(self, seconds, i=i)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Lock(key="{key}", ttl=10)])
def locked(self: Any, key: str, i: int, seconds: float) -> int:
    _run(self, seconds, i=i, key=key)
    return i


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[
        Concurrency(1, key="{tenant}", name="tenant-cap"),
        RateLimit("1000/s", burst=1000, key="{doc}", name="doc-rate"),
    ],
)
def tenant_doc(self: Any, tenant: str, doc: str, i: int, seconds: float) -> int:
    """A per-tenant cap and a per-document limit: two slots on a cluster."""
    _run(self, seconds, i=i, key=tenant)
    return i


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Concurrency(3, fair="{tenant}", name="fair3")],
)
def tenant_task(self: Any, tenant: str, i: int, seconds: float) -> int:
    _run(self, seconds, i=i, tenant=tenant)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[RateLimit("10/m", name="live")])
def live(self: Any, i: int) -> int:
    _run(self, 0.0, i=i)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Concurrency(4, name="livecap")])
def capped(self: Any, i: int, seconds: float) -> int:
    _run(self, seconds, i=i)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Debounce(1.0, key="{doc}")])
def reindex(self: Any, doc: str, version: int) -> int:
    _run(self, 0.0, doc=doc, version=version)
    return version
