"""The Celery app the integration tests run in real worker processes.

Configured entirely from the environment the test passes to the worker:

* ``TG_BROKER_URL``: the broker (Redis or RabbitMQ);
* ``TG_RESULT_URL``: the result backend (Redis), also where tasks record what they saw;
  the broker's URL when unset (a Redis broker);
* ``TASKGUARD_REDIS_URL``: where guard state lives (may be a server the test stops);
* ``TG_PREFIX`` / ``TG_QUEUE``: key prefix and queue, unique per test module;
* ``TG_SETTINGS``: JSON merged into ``app.conf.taskguard``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Ignore, Reject

from taskguard import Concurrency, GuardedTask, Lock, Quota, RateLimit, signals

BROKER = os.environ["TG_BROKER_URL"]
RESULTS = os.environ.get("TG_RESULT_URL") or BROKER
PREFIX = os.environ["TG_PREFIX"]

app = Celery("guarded", broker=BROKER, backend=RESULTS, set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TG_QUEUE"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=4,
)
app.conf.taskguard = {"key_prefix": PREFIX, **json.loads(os.environ.get("TG_SETTINGS", "{}"))}

_records = redis.Redis.from_url(RESULTS)


def record(stream: str, **fields: Any) -> None:
    """Append one JSON event, stamped with the record server's TIME, to ``<prefix>:<stream>``."""
    seconds, micros = _records.time()
    fields.update(t=seconds + micros / 1e6, host=socket.gethostname(), pid=os.getpid())
    _records.rpush(f"{PREFIX}:{stream}", json.dumps(fields))


def _seen(task: Any, **fields: Any) -> None:
    request = task.request
    headers = request.headers or {}
    record(
        "runs",
        id=request.id,
        name=task.name,
        worker=request.hostname,
        retries=request.retries,
        deferrals=headers.get("taskguard-deferrals", 0),
        **fields,
    )


@app.task(shared=False, bind=True, base=GuardedTask, guards=[RateLimit("20/s")])
def steady(self: Any, i: int) -> int:
    _seen(self, i=i)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[RateLimit("4/s", key="{customer_id}")])
def per_customer(self: Any, customer_id: str, i: int) -> int:
    _seen(self, customer_id=customer_id, i=i)
    return i


@app.task(
    shared=False, bind=True, base=GuardedTask, guards=[RateLimit("1000/s")], soft_time_limit=0.5
)
def outcome(self: Any, kind: str) -> str:
    _seen(self, kind=kind)
    if kind == "failure":
        raise ValueError("boom")
    if kind == "retry" and self.request.retries == 0:
        raise self.retry(countdown=0.1)
    if kind == "ignore":
        raise Ignore()
    if kind == "reject":
        raise Reject("rejected on purpose", requeue=False)
    if kind == "soft_time_limit":
        time.sleep(5)  # outlasts soft_time_limit=0.5: the limit interrupts this sleep
    return kind


@app.task(shared=False, bind=True, base=GuardedTask, guards=[RateLimit("1/h")])
def capped(self: Any, policy: str) -> str:
    _seen(self, policy=policy)
    return policy


@app.task(
    shared=False, bind=True, base=GuardedTask, guards=[RateLimit("1000/s", on_outage="allow")]
)
def outage_allow(self: Any, i: int) -> int:
    _seen(self, i=i)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[RateLimit("1000/s", on_outage="deny")])
def outage_deny(self: Any, i: int) -> int:
    _seen(self, i=i)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Quota("25/day", key="{tenant}")])
def metered(self: Any, tenant: str, i: int) -> int:
    _seen(self, tenant=tenant, i=i)
    return i


@app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/s", key="{customer_id}")])
def takes_customer(customer_id: str) -> None: ...


def _on_released(sender: Any = None, task_id: str = "", outcome: str = "", **kw: Any) -> None:
    record("released", id=task_id, name=sender.name, outcome=outcome)


def _on_deferred(sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
    record(
        "deferred", id=task_id, name=sender.name, delay=kwargs["delay"], reserved=kwargs["reserved"]
    )


def _on_exhausted(sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
    record("exhausted", id=task_id, name=sender.name, policy=kwargs["policy"])


signals.guard_released.connect(_on_released, weak=False)
signals.task_deferred.connect(_on_deferred, weak=False)
signals.deferral_exhausted.connect(_on_exhausted, weak=False)


# ---- locks -------------------------------------------------------------------------------


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Lock(key="{key}", ttl=10, wait=2)])
def exclusive(self: Any, key: str, i: int) -> int:
    seconds, micros = _records.time()
    start = seconds + micros / 1e6
    time.sleep(0.01)  # holds the lock a moment: an overlapping holder would show
    seconds, micros = _records.time()
    record(
        "locked",
        key=key,
        i=i,
        token=self.request.taskguard.fencing_token,
        start=start,
        end=seconds + micros / 1e6,
    )
    return i


def _hold(task: Any, key: str, seconds: float) -> bool:
    info = task.request.taskguard
    _seen(task, key=key, token=info.fencing_token, phase="start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)  # holds the lock for ``seconds`` (the heartbeat renews it)
    _seen(task, key=key, token=info.fencing_token, phase="end", lease_lost=info.lease_lost)
    return bool(info.lease_lost)


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Lock(key="{key}", ttl=5, wait=8, name="hold5")],
)
def hold5(self: Any, key: str, seconds: float) -> bool:
    return _hold(self, key, seconds)


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Lock(key="{key}", ttl=5, on_conflict="skip", name="hold5")],
)
def skip5(self: Any, key: str) -> str:
    _seen(self, key=key, phase="ran")
    return "ran"


@app.task(
    shared=False, bind=True, base=GuardedTask, guards=[Lock(key="{key}", ttl=2, name="hold2")]
)
def hold2(self: Any, key: str, seconds: float) -> bool:
    return _hold(self, key, seconds)


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Lock(key="{i}")])
def outage_lock(self: Any, i: int) -> int:
    _seen(self, i=i)
    return i


def _on_lease_lost(
    sender: Any = None, task_id: str | None = None, key: str = "", **kw: Any
) -> None:
    record("lost", id=task_id, key=key)


def _on_conflict(sender: Any = None, task_id: str = "", key: str = "", **kw: Any) -> None:
    record("conflict", id=task_id, name=sender.name, key=key, action=kw["action"])


signals.lease_lost.connect(_on_lease_lost, weak=False)
signals.lock_conflict.connect(_on_conflict, weak=False)


# ---- concurrency ---------------------------------------------------------------------


def _timed(task: Any, seconds: float, **fields: Any) -> None:
    start = _records.time()
    time.sleep(seconds)  # the task's work: it holds its slot this long
    end = _records.time()
    record(
        "slots",
        id=task.request.id,
        name=task.name,
        start=start[0] + start[1] / 1e6,
        end=end[0] + end[1] / 1e6,
        deferrals=(task.request.headers or {}).get("taskguard-deferrals", 0),
        **fields,
    )


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Concurrency(2, wait=10, name="cap2")])
def capped_slot(self: Any, i: int, seconds: float = 0.02) -> int:
    _timed(self, seconds, i=i)
    return i


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Concurrency(2, key="{tenant}", wait=10, name="cap-t")],
)
def tenant_slot(self: Any, tenant: str, i: int) -> int:
    _timed(self, 0.02, tenant=tenant, i=i)
    return i


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Concurrency(1, ttl=5, wait=8, name="crashcap")],
)
def crash_slot(self: Any, i: int, seconds: float) -> int:
    _seen(self, i=i, phase="start")
    _timed(self, seconds, i=i)
    return i


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Concurrency(1, wait=0.5, retry_delay=0.2, name="short-wait")],
)
def short_wait_slot(self: Any, i: int, seconds: float) -> int:
    _seen(self, i=i, phase="start")
    _timed(self, seconds, i=i)
    return i


@app.task(shared=False, bind=True, base=GuardedTask, guards=[Concurrency(1, name="outage-cap")])
def outage_slot(self: Any, i: int) -> int:
    _seen(self, i=i)
    return i
