"""The demo's Celery app: Celery's ``rate_limit`` next to taskguard's, a concurrency cap,
a breaker and a write-behind cache.

The two rate-limited tasks do the same thing: record when they started, by the Redis
server's clock (so starts in different worker processes compare exactly), with the
retries they had spent and the deferrals they went through. The two capped tasks hold one
of :data:`CAP` fleet-wide slots for a while and record when they started and ended; one
parks when refused (the default), the other defers by time (``park: False``). The next
calls the partner stub through :data:`PARTNER_BREAKER` and records how the call went; the
workers also record every breaker transition and every task that ended FAILURE. The last
writes a batch of sensor readings through a write-behind cache; the write-behind stage's
workers also run the drain pool that moves them into the database.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import redis
from celery import Celery
from celery import signals as celery_signals

import taskguard
from taskguard import signals
from taskguard.celery._deferral import DeferralState
from taskguard.celery._task import GuardedTask
from taskguard.errors import TaskGuardError
from taskguard.guards import CircuitBreaker, Concurrency, RateLimit

from .config import BREAKER_STAGE, CLUSTER_STAGE, PARK_STAGE, WRITEBEHIND_STAGE, DemoConfig

__all__ = [
    "BREAKER_TASK",
    "BY_TIME_RECORDS",
    "BY_TIME_TASK",
    "CAP",
    "CELERY_TASK",
    "GUARDED_TASK",
    "NAMESPACE",
    "PARKED_TASK",
    "PARTNER_BREAKER",
    "SENSORS",
    "TENANT_RATE",
    "TENANT_TASK",
    "WRITEBEHIND_TASK",
    "WRITES_PER_TASK",
    "PartnerDown",
    "create_app",
    "parse_start",
]

CELERY_TASK = "taskguard_demo.celery_rate_limited"
GUARDED_TASK = "taskguard_demo.taskguard_rate_limited"
BREAKER_TASK = "taskguard_demo.call_partner"
WRITEBEHIND_TASK = "taskguard_demo.record_readings"
PARKED_TASK = "taskguard_demo.capped_parked"
BY_TIME_TASK = "taskguard_demo.capped_by_time"
TENANT_TASK = "taskguard_demo.tenant_call"

#: The Cluster stage's per-tenant limit: one bucket per tenant, each in its tenant's slot.
TENANT_RATE = 4

#: The parking stage's fleet-wide cap: each capped task has its own (the cap's name
#: defaults to the task's).
CAP = 2
#: Where :data:`BY_TIME_TASK` records its runs (``config.starts_key(BY_TIME_RECORDS)``);
#: :data:`PARKED_TASK` records under the stage's own name.
BY_TIME_RECORDS = f"{PARK_STAGE}-by-time"

#: The write-behind stage's cache namespace, its sensors (one key each) and the readings
#: one task writes (one ``set_many``).
NAMESPACE = "readings"
SENSORS = 500
WRITES_PER_TASK = 50
#: The drain pools' partition lease: a killed worker's partitions are taken over after it.
DRAIN_LEASE_TTL = 2.0

#: The breaker stage's breaker, shared by the fleet: it opens when half of the last 10
#: calls failed (after at least 5), stays open 2 s, then lets 1 probe through.
PARTNER_BREAKER = CircuitBreaker(
    "partner-api", window=10, minimum_calls=5, failure_rate=0.5, open_for=2, half_open_probes=1
)
_STAGE_OF = {GUARDED_TASK: "taskguard", BREAKER_TASK: BREAKER_STAGE}


class PartnerDown(Exception):
    """The partner answered with an HTTP error."""


_clients: dict[tuple[int, str], redis.Redis] = {}
_caches: dict[int, Any] = {}


def _client(url: str) -> redis.Redis:
    # One client per (process, URL): pool children must not share their parent's sockets.
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = redis.Redis.from_url(url)
    return client


def _now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds + micros / 1e6)


def _record_start(
    task: Any, config: DemoConfig, stage: str, *, t: float | None = None, **extra: Any
) -> None:
    """Append one record of this run to ``stage``'s list; ``t`` defaults to now."""
    client = _client(config.redis_url)
    request = task.request
    record = {
        "t": _now(client) if t is None else t,
        "retries": int(request.retries or 0),
        "deferrals": DeferralState.from_headers(request.headers).count,
        "worker": request.hostname,
        **extra,
    }
    client.rpush(config.starts_key(stage), json.dumps(record))


def reading_cache(config: DemoConfig) -> Any:
    """This process's write-behind cache of sensor readings (built once per process)."""
    cache = _caches.get(os.getpid())
    if cache is None:
        from taskguard.sinks import store_from_url

        store = store_from_url(config.db_url, table=config.table, create=False)
        cache = _caches[os.getpid()] = taskguard.connect(
            config.redis_url, prefix=config.prefix
        ).cache(NAMESPACE, strategy="write-behind", ttl=600, store=store)
    return cache


def parse_start(raw: bytes | str) -> dict[str, Any]:
    """One record written by a demo task (see :func:`create_app`)."""
    record: dict[str, Any] = json.loads(raw)
    return record


def create_app(config: DemoConfig) -> Celery:
    """The demo's Celery app, wired to ``config``'s Redis, queues and prefix.

    Every Redis key Celery's transport writes carries the run's prefix
    (``global_keyprefix``), as does taskguard's guard state (``key_prefix``), so a run on
    a shared Redis can delete exactly what it wrote.
    """
    app = Celery("taskguard_demo", broker=config.broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        broker_transport_options={"global_keyprefix": f"{config.prefix}:kombu:"},
        task_ignore_result=True,
        # Celery's best case. With the default prefetch (4 per process), messages wait in
        # each worker's rate-limit bucket on event-loop timers, and the workers stalled for
        # about a second at a time here: 4-18/s for the fleet instead of 3 x 10/s. One
        # message at a time lets every worker run at exactly its own limit.
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        task_routes={
            CELERY_TASK: {"queue": config.queue("celery")},
            GUARDED_TASK: {"queue": config.queue("taskguard")},
            BREAKER_TASK: {"queue": config.queue(BREAKER_STAGE)},
            PARKED_TASK: {"queue": config.queue(PARK_STAGE)},
            BY_TIME_TASK: {"queue": config.queue(PARK_STAGE)},
            WRITEBEHIND_TASK: {"queue": config.queue(WRITEBEHIND_STAGE)},
            TENANT_TASK: {"queue": config.queue(CLUSTER_STAGE)},
        },
        taskguard=_taskguard_settings(config),
    )
    rate = f"{config.rate}/s"

    def celery_rate_limited(self: Any) -> None:
        """Celery's own limit: enforced by each worker instance on its own."""
        _record_start(self, config, "celery")

    def taskguard_rate_limited(self: Any) -> None:
        """taskguard's limit: one GCRA bucket in Redis shared by the whole fleet."""
        _record_start(self, config, "taskguard")

    def call_partner(self: Any, url: str) -> None:
        """Call the partner stub through the fleet's breaker; a refused call is deferred."""
        try:
            with urllib.request.urlopen(f"{url}/?task={self.request.id}", timeout=10) as reply:
                reply.read()
            status = 200
        except urllib.error.HTTPError as exc:
            status = exc.code
        _record_start(self, config, BREAKER_STAGE, id=self.request.id, status=status)
        if status != 200:
            raise PartnerDown(f"the partner answered HTTP {status}")

    app.task(name=CELERY_TASK, bind=True, rate_limit=rate)(celery_rate_limited)
    app.task(name=GUARDED_TASK, bind=True, base=GuardedTask, guards=[RateLimit(rate)])(
        taskguard_rate_limited
    )

    def record_readings(self: Any, batch: int) -> None:
        """Write one batch of readings through the write-behind cache: one Redis call."""
        first = batch * WRITES_PER_TASK
        readings = {
            f"sensor-{n % SENSORS:03d}": {"reading": n, "worker": self.request.hostname}
            for n in range(first, first + WRITES_PER_TASK)
        }
        reading_cache(config).set_many(readings)
        _client(config.redis_url).incr(config.done_key(WRITEBEHIND_STAGE))

    def capped(records: str) -> Any:
        def hold_a_slot(self: Any, n: int, seconds: float) -> None:
            """Hold one of the fleet's :data:`CAP` slots for ``seconds``: task ``n`` of a batch."""
            client = _client(config.redis_url)
            started = _now(client)
            time.sleep(seconds)
            _record_start(self, config, records, t=started, end=_now(client), n=n)

        return hold_a_slot

    for name, records in ((PARKED_TASK, PARK_STAGE), (BY_TIME_TASK, BY_TIME_RECORDS)):
        app.task(name=name, bind=True, base=GuardedTask, guards=[Concurrency(CAP)])(capped(records))
    app.task(name=BREAKER_TASK, bind=True, base=GuardedTask, guards=[PARTNER_BREAKER])(call_partner)
    app.task(name=WRITEBEHIND_TASK, bind=True, base=GuardedTask)(record_readings)

    def tenant_call(self: Any, tenant: str) -> None:
        """One call for ``tenant``, under its own fleet-wide bucket (on the Cluster)."""
        _record_start(self, config, CLUSTER_STAGE, tenant=tenant)

    per_tenant = RateLimit(f"{TENANT_RATE}/s", key="{tenant}", name="per-tenant")
    app.task(name=TENANT_TASK, bind=True, base=GuardedTask, guards=[per_tenant])(tenant_call)
    _connect_signals(config)
    return app


def _taskguard_settings(config: DemoConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "redis_url": config.guard_url or config.redis_url,
        "key_prefix": config.prefix,
        # Deferral by time, as every refused task was deferred before parking.
        "tasks": {BY_TIME_TASK: {"park": False}},
    }
    if config.drain:
        settings["drain"] = {
            "enabled": True,
            "store": config.db_url,
            "table": config.table,
            "namespaces": [NAMESPACE],
            "workers": 1,
            "lease_ttl": DRAIN_LEASE_TTL,
        }
    return settings


def _connect_signals(config: DemoConfig) -> None:
    """Record, from inside the workers, what the parent reads back after each stage."""

    def count_deferral(sender: Any = None, **kwargs: Any) -> None:
        stage = _STAGE_OF.get(getattr(sender, "name", ""))
        if stage is not None:
            _client(config.redis_url).incr(config.deferrals_key(stage))

    def record_failure(
        sender: Any = None, task_id: str = "", exception: Any = None, **_: Any
    ) -> None:
        if getattr(sender, "name", None) != BREAKER_TASK:
            return
        record = {
            "id": task_id,
            "error": type(exception).__name__,
            "by_taskguard": isinstance(exception, TaskGuardError),
        }
        _client(config.redis_url).rpush(config.failures_key(BREAKER_STAGE), json.dumps(record))

    def record_transition(sender: Any = None, **kwargs: Any) -> None:
        if kwargs.get("name") != PARTNER_BREAKER.name:
            return
        client = _client(config.redis_url)
        fields = ("old", "new", "reason", "task_id")
        record = {"t": _now(client), **{name: kwargs.get(name) for name in fields}}
        client.rpush(config.transitions_key(), json.dumps(record))

    def count_drained(sender: Any = None, records: int = 0, rows: int = 0, **_: Any) -> None:
        pipe = _client(config.redis_url).pipeline(transaction=False)
        pipe.hincrby(config.drained_key(), "records", records)
        pipe.hincrby(config.drained_key(), "rows", rows)
        pipe.hincrby(config.drained_key(), "batches", 1)
        pipe.execute()

    uid = config.prefix
    signals.drain_batch_written.connect(count_drained, weak=False, dispatch_uid=uid)
    signals.task_deferred.connect(count_deferral, weak=False, dispatch_uid=uid)
    signals.circuit_state_changed.connect(record_transition, weak=False, dispatch_uid=uid)
    celery_signals.task_failure.connect(record_failure, weak=False, dispatch_uid=uid)
