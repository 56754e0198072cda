"""The Celery app the chaos tests run in real worker processes, recording for the auditor.

Configured from the environment, as tests/integration/apps/guarded.py is (so the
integration ``Fleet`` runs it):

* ``TG_BROKER_URL``: broker, and where runs record what they saw. No fault reaches it, so
  the records and their timestamps (this server's ``TIME``) survive every fault;
* ``TASKGUARD_REDIS_URL``: where guard state lives: the test's own server, the one the
  faults hit;
* ``TG_PREFIX`` / ``TG_QUEUE``: key prefix and queue, unique per fleet;
* ``TG_SETTINGS``: JSON merged into ``app.conf.taskguard``.

Records (lists ``<prefix>:<stream>`` of JSON objects with ``t``, ``pid``, ``worker``):

* ``leases``: ``fenced`` runs, ``phase`` ``start`` / ``end``, with their fencing token;
* ``slots``: ``capped`` runs, ``phase`` ``start`` / ``end``;
* ``admissions``: ``limited`` runs, and whether they came with a reservation;
* ``lost``: every ``lease_lost`` signal (task id, lease key);
* ``deferred``: every ``task_deferred`` signal (task id, whether a slot was reserved);
* ``resource``: the fenced resource's log (see ``fenced_resource.lua``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from taskguard import Concurrency, GuardedTask, Lock, RateLimit, signals

from .limits import BURST, CAP, CAP_TTL, LOCK_TTL, RATE

BROKER = os.environ["TG_BROKER_URL"]
PREFIX = os.environ["TG_PREFIX"]

app = Celery("audited", broker=BROKER, backend=BROKER, set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TG_QUEUE"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # One message per free pool process: a killed worker takes few unstarted tasks with it.
    worker_prefetch_multiplier=1,
)
app.conf.taskguard = {"key_prefix": PREFIX, **json.loads(os.environ.get("TG_SETTINGS", "{}"))}

_records = redis.Redis.from_url(BROKER)
_resource = _records.register_script((Path(__file__).with_name("fenced_resource.lua")).read_text())


def now() -> float:
    """The recording server's clock, in seconds."""
    seconds, micros = _records.time()
    return float(seconds + micros / 1e6)


def record(stream: str, task: Any, **fields: Any) -> None:
    """Append one event, stamped with the recording server's TIME, to ``<prefix>:<stream>``."""
    fields.update(t=now(), pid=os.getpid(), id=task.request.id, worker=task.request.hostname)
    _records.rpush(f"{PREFIX}:{stream}", json.dumps(fields))


def write_resource(key: str, token: int, holder: str) -> bool:
    """Offer one write to the fenced resource; True if it accepted the token."""
    keys = [f"{PREFIX}:resource:last", f"{PREFIX}:resource"]
    return bool(_resource(keys=keys, args=[key, str(token), holder]))


@app.task(
    bind=True,
    base=GuardedTask,
    guards=[Lock(key="{key}", ttl=LOCK_TTL, wait=LOCK_TTL + 1, name="fenced")],
)
def fenced(self: Any, key: str, hold: float) -> None:
    """Hold the lock on ``key`` for ``hold`` seconds, writing to the fenced resource with
    the lock's token every 50 ms and once more at the end; stop at the first refusal, as
    a fencing-aware client would."""
    info = self.request.taskguard
    token = int(info.fencing_token)
    record("leases", self, key=key, token=token, phase="start")
    deadline = time.monotonic() + hold
    while (accepted := write_resource(key, token, self.request.id)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)  # the work between two writes
    record("leases", self, key=key, token=token, phase="end", accepted=accepted)


@app.task(
    bind=True,
    base=GuardedTask,
    guards=[Concurrency(CAP, ttl=CAP_TTL, wait=1, name="capped")],
)
def capped(self: Any, hold: float) -> None:
    """Hold one of the cap's slots for ``hold`` seconds."""
    record("slots", self, phase="start")
    time.sleep(hold)  # the work: it holds its slot this long
    record("slots", self, phase="end")


@app.task(
    bind=True,
    base=GuardedTask,
    guards=[RateLimit(f"{RATE:g}/s", burst=BURST, name="limited", on_outage="deny")],
)
def limited(self: Any) -> None:
    """Record the admission, and whether a reservation paid for its slot."""
    reserved = bool((self.request.headers or {}).get("taskguard-reservation"))
    record("admissions", self, reserved=reserved)


def _on_lease_lost(sender: Any = None, task_id: str | None = None, key: str = "", **_: Any) -> None:
    seconds, micros = _records.time()
    event = {"id": task_id, "key": key, "t": seconds + micros / 1e6, "pid": os.getpid()}
    _records.rpush(f"{PREFIX}:lost", json.dumps(event))


def _on_deferred(sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
    seconds, micros = _records.time()
    event = {"id": task_id, "t": seconds + micros / 1e6, "reserved": kwargs["reserved"]}
    _records.rpush(f"{PREFIX}:deferred", json.dumps(event))


signals.lease_lost.connect(_on_lease_lost, weak=False)
signals.task_deferred.connect(_on_deferred, weak=False)
