# mypy: disable-error-code="untyped-decorator"
# (celery ships no type information, so its decorators are untyped)
"""The Celery app the benchmark workers run, configured from the environment.

The benchmarks start workers with ``celery -A benchmarks.celeryapp worker`` from the
repository root and set:

``TG_BENCH_BROKER_URL``
    The broker (Redis, or RabbitMQ for the work-conserving benchmark). Required.
``TG_BENCH_STATE_URL``
    Where taskguard keeps guard state (default: the broker, as in most deployments).
``TG_BENCH_RECORD_URL``
    The Redis where tasks record their start (and end) times (default: the broker).
``TG_BENCH_PREFIX``
    taskguard's key prefix, unique per run.
``TG_BENCH_RATE``
    The rate of the two rate-limited tasks (default ``20/s``).

Per-task log lines are off (as with ``-l WARNING``), so the plain no-op runs as fast as
Celery can, and the guarded one's overhead is not hidden behind logging.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from celery import Celery, Task, signals

from taskguard import CircuitBreaker, Concurrency, GuardedTask, Lock, RateLimit
from taskguard import signals as tg_signals

BROKER_URL = os.environ.get("TG_BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
STATE_URL = os.environ.get("TG_BENCH_STATE_URL", BROKER_URL)
RECORD_URL = os.environ.get("TG_BENCH_RECORD_URL", BROKER_URL)
PREFIX = os.environ.get("TG_BENCH_PREFIX", "tgbench")
RATE = os.environ.get("TG_BENCH_RATE", "20/s")

#: A limit no benchmark reaches: the guarded no-op measures the cost of asking.
NEVER_DENIES = RateLimit("1000000/s", burst=1_000_000)

#: The limiter the live-limit benchmark lowers at run time (``Client.set_limit``); its
#: configured rate never denies at the offered load, so every denial is the new rate's.
LIVE_LIMIT = RateLimit("1000/s", burst=100, key="{bucket}", name="bench-live-limit")

#: A cap no benchmark reaches: a guard that holds a lease, so the task makes a release call.
NEVER_FULL = Concurrency(1_000_000, name="bench-slots")
#: A breaker that stays closed (every task succeeds).
PARTNER = CircuitBreaker("bench-partner", window=100)

#: Keyed guards that never deny, for the per-slot round trips on a cluster (roundtrips):
#: a per-customer limit and cap share the customer's slot; a per-document lock has the
#: document's, unless its tag names the customer.
PER_CUSTOMER = RateLimit("1000000/s", burst=1_000_000, key="{customer}", name="bench-customer")
CUSTOMER_CAP = Concurrency(1_000_000, key="{customer}", name="bench-customer-cap")
PER_DOCUMENT = Lock(key="{doc}", name="bench-doc")
DOCUMENT_BY_CUSTOMER = Lock(key="{doc}", tag="{customer}", name="bench-doc-tagged")

app = Celery("benchmarks", broker=BROKER_URL)
app.conf.update(
    taskguard={
        "redis_url": STATE_URL,
        "key_prefix": PREFIX,
        # The live-limit benchmark only watches decisions: a denied task is dropped, so
        # no deferred task comes back to load the workers during a later change.
        "tasks": {"bench.live_limit": {"max_deferrals": 0, "on_deferral_exhausted": "drop"}},
    },
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)


@signals.after_setup_logger.connect(weak=False)
def _quiet_per_task_logs(**kwargs: Any) -> None:
    # Celery decides once per process whether to log "received" and "succeeded" lines;
    # raising these two loggers to WARNING before the pool forks turns both off, while
    # the worker's own "ready." line (which WorkerProcess waits for) still appears.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


_recorders: dict[int, redis.Redis] = {}


def _recorder() -> redis.Redis:
    pid = os.getpid()
    client = _recorders.get(pid)
    if client is None:  # one client per pool process, made after the fork
        client = _recorders[pid] = redis.Redis.from_url(RECORD_URL)
    return client


def _now(client: redis.Redis) -> str:
    seconds, micros = client.time()
    return f"{seconds}.{micros:06d}"


def _deferrals(request: Any) -> int:
    return int((request.headers or {}).get("taskguard-deferrals") or 0)


def _record(key: str, request: Any) -> None:
    """Append this run's start time (Redis ``TIME``) and deferral count to list ``key``."""
    client = _recorder()
    client.rpush(key, f"{_now(client)} {_deferrals(request)}")


@app.task(name="bench.noop")
def noop() -> None:
    """Does nothing: the baseline for the overhead benchmark."""


@app.task(name="bench.guarded_noop", base=GuardedTask, guards=[NEVER_DENIES])
def guarded_noop() -> None:
    """Does nothing after one admission that always passes."""


@app.task(name="bench.guarded_slot", base=GuardedTask, guards=[NEVER_FULL])
def guarded_slot() -> None:
    """Takes a concurrency slot at start and gives it back at the end."""


@app.task(name="bench.guarded_slot_breaker", base=GuardedTask, guards=[NEVER_FULL, PARTNER])
def guarded_slot_breaker() -> None:
    """The same, behind a circuit breaker: its check and outcome ride in the same calls."""


@app.task(name="bench.guarded_breaker", base=GuardedTask, guards=[PARTNER])
def guarded_breaker() -> None:
    """A breaker alone: admission at start, the outcome in a release call at the end."""


@app.task(name="bench.keyed_pair", base=GuardedTask, guards=[PER_CUSTOMER, CUSTOMER_CAP])
def keyed_pair(customer: str, doc: str) -> None:
    """A per-customer limit and cap: one slot (the customer's)."""


@app.task(name="bench.keyed_spread", base=GuardedTask, guards=[PER_CUSTOMER, PER_DOCUMENT])
def keyed_spread(customer: str, doc: str) -> None:
    """A per-customer limit and a per-document lock: two slots on a cluster."""


@app.task(name="bench.keyed_tagged", base=GuardedTask, guards=[PER_CUSTOMER, DOCUMENT_BY_CUSTOMER])
def keyed_tagged(customer: str, doc: str) -> None:
    """The same with the lock's ``tag="{customer}"``: back to one slot."""


@app.task(name="bench.guarded_rate", base=GuardedTask, guards=[RateLimit(RATE)], bind=True)
def guarded_rate(self: Task, record_key: str) -> None:
    """Records its start under taskguard's fleet-wide ``RateLimit(RATE)``."""
    _record(record_key, self.request)


@app.task(name="bench.capped_sleep", base=GuardedTask, guards=[Concurrency(2)], bind=True)
def capped_sleep(self: Task, record_key: str, seconds: float) -> None:
    """Sleeps ``seconds`` under a fleet-wide ``Concurrency(2)`` (its defaults otherwise).

    Appends ``"<start> <end> <deferrals>"`` (Redis ``TIME``) to ``record_key`` at the end.
    """
    client = _recorder()
    started, deferrals = _now(client), _deferrals(self.request)
    time.sleep(seconds)
    client.rpush(record_key, f"{started} {_now(client)} {deferrals}")


@app.task(name="bench.celery_rate", rate_limit=RATE, bind=True)
def celery_rate(self: Task, record_key: str) -> None:
    """Records its start under Celery's own (per worker) ``rate_limit=RATE``."""
    _record(record_key, self.request)


#: The fair-share benchmark's cap: 10 slots shared by tenants, handed back by weighted
#: fair queuing between them (benchmarks/fairness.py).
FAIR_CAP = Concurrency(10, fair="{tenant}", name="bench-fair")


@app.task(name="bench.tenant_sleep", base=GuardedTask, guards=[FAIR_CAP], bind=True)
def tenant_sleep(self: Task, record_key: str, tenant: str, seconds: float, arrival: float) -> None:
    """Sleeps ``seconds`` in one of ``FAIR_CAP``'s slots.

    Appends ``"<tenant> <arrival> <start> <end> <deferrals>"`` (Redis ``TIME``; the
    arrival is the publisher's reading of it just before sending) to ``record_key``.
    """
    client = _recorder()
    started, deferrals = _now(client), _deferrals(self.request)
    time.sleep(seconds)
    client.rpush(record_key, f"{tenant} {arrival!r} {started} {_now(client)} {deferrals}")


@app.task(name="bench.live_limit", base=GuardedTask, guards=[LIVE_LIMIT], bind=True)
def live_limit(self: Task, bucket: str) -> None:
    """Records ``"<start> <node> <bucket>"`` (Redis ``TIME``) in ``<prefix>:live-starts``."""
    client = _recorder()
    client.rpush(f"{PREFIX}:live-starts", f"{_now(client)} {self.request.hostname} {bucket}")


@tg_signals.guard_denied.connect(weak=False)
def _record_live_denial(sender: Any = None, key: str = "", **kwargs: Any) -> None:
    # Sent in the pool process right after the admission script refused: the time is the
    # decision's, give or take one round trip to the recording Redis.
    if getattr(sender, "name", None) == "bench.live_limit":
        client = _recorder()
        node = sender.request.hostname
        client.rpush(f"{PREFIX}:live-denials", f"{_now(client)} {node} {key}")


if os.environ.get("TG_BENCH_OBSERVED"):
    from .observing import observe

    observe(app, prefix=PREFIX, counter_url=RECORD_URL)
