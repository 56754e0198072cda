"""A worker app with Sentry (recording transport) and Prometheus (``metrics`` setting) on.

Configured like guarded.py (``TG_BROKER_URL``, ``TG_RESULT_URL``, ``TG_PREFIX``,
``TG_QUEUE``, ``TG_SETTINGS``). Sentry is initialised with a real ``sentry_sdk.init``
whose transport writes each recorded event, reduced to what the test checks, to the Redis
list ``<prefix>:sentry``: nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
import sentry_sdk
from celery import Celery
from sentry_sdk.integrations.celery import CeleryIntegration

import taskguard
from taskguard import CircuitBreaker, GuardedTask, RateLimit
from taskguard.sentry import TaskguardIntegration
from tests.sentry_transport import DSN, Recording

BROKER = os.environ["TG_BROKER_URL"]
RESULTS = os.environ.get("TG_RESULT_URL") or BROKER
PREFIX = os.environ["TG_PREFIX"]

app = Celery("observed", broker=BROKER, backend=RESULTS, set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TG_QUEUE"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
)
app.conf.taskguard = {"key_prefix": PREFIX, **json.loads(os.environ.get("TG_SETTINGS", "{}"))}

_clients: dict[int, redis.Redis] = {}


def _client() -> redis.Redis:
    pid = os.getpid()  # one connection per pool process (never shared across a fork)
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(RESULTS)
    return _clients[pid]


def _sink(event: dict[str, Any]) -> None:
    trace = event.get("contexts", {}).get("trace", {})
    reduced = {
        "type": event.get("type", "error"),
        "transaction": event.get("transaction"),
        "trace_id": trace.get("trace_id"),
        "op": trace.get("op"),
        "tags": event.get("tags", {}),
        "taskguard": event.get("contexts", {}).get("taskguard"),
        "spans": [
            {"op": s.get("op"), "data": s.get("data", {}), "span_id": s.get("span_id")}
            for s in event.get("spans", [])
        ],
        "pid": os.getpid(),
    }
    _client().rpush(f"{PREFIX}:sentry", json.dumps(reduced, default=str))


Recording.sink = _sink
sentry_sdk.init(
    dsn=DSN,
    transport=Recording,
    traces_sample_rate=1.0,
    default_integrations=False,
    auto_enabling_integrations=False,
    integrations=[CeleryIntegration(), TaskguardIntegration()],
)


@app.task(shared=False, base=GuardedTask, guards=[RateLimit("1000000/s")])
def noop(i: int) -> int:
    return i


@app.task(shared=False, base=GuardedTask, guards=[RateLimit("5/s")])
def limited(i: int) -> int:
    return i


@app.task(
    shared=False,
    base=GuardedTask,
    # on_open="fail": the third call fails at once instead of waiting out open_for.
    guards=[CircuitBreaker("obs-partner", consecutive_failures=2, open_for=60, on_open="fail")],
)
def partner(i: int) -> int:
    raise RuntimeError(f"partner down ({i})")


@app.task(shared=False)
def write_behind(count: int) -> int:
    """Queue ``count`` write-behind writes (no drain runs: they stay in the backlog)."""
    client = taskguard.connect(taskguard.celery.runtime_for(app).backend)
    from tests.unit.test_cache_fakes import MemoryStore

    cache = client.cache("obs-orders", ttl=60, strategy="write-behind", store=MemoryStore())
    cache.set_many({str(i): {"n": i} for i in range(count)})
    return count
