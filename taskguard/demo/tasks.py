"""The demo's Celery app: one plain task with Celery's ``rate_limit``, one ``GuardedTask``.

Both tasks do the same thing: record when they started, by the Redis server's clock (so
starts in different worker processes compare exactly), with the retries they had spent
and the deferrals they went through.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

from taskguard import signals
from taskguard.deferral import DeferralState
from taskguard.guards import RateLimit
from taskguard.task import GuardedTask

from .config import DemoConfig

__all__ = ["CELERY_TASK", "GUARDED_TASK", "create_app", "parse_start"]

CELERY_TASK = "taskguard_demo.celery_rate_limited"
GUARDED_TASK = "taskguard_demo.taskguard_rate_limited"

_clients: dict[tuple[int, str], redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    # One client per (process, URL): pool children must not share their parent's sockets.
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = redis.Redis.from_url(url)
    return client


def _record_start(task: Any, config: DemoConfig, stage: str) -> None:
    client = _client(config.redis_url)
    seconds, micros = client.time()
    request = task.request
    record = {
        "t": seconds + micros / 1e6,
        "retries": int(request.retries or 0),
        "deferrals": DeferralState.from_headers(request.headers).count,
        "worker": request.hostname,
    }
    client.rpush(config.starts_key(stage), json.dumps(record))


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
        },
        taskguard={"redis_url": config.redis_url, "key_prefix": config.prefix},
    )
    rate = f"{config.rate}/s"

    def celery_rate_limited(self: Any) -> None:
        """Celery's own limit: enforced by each worker instance on its own."""
        _record_start(self, config, "celery")

    def taskguard_rate_limited(self: Any) -> None:
        """taskguard's limit: one GCRA bucket in Redis shared by the whole fleet."""
        _record_start(self, config, "taskguard")

    app.task(name=CELERY_TASK, bind=True, rate_limit=rate)(celery_rate_limited)
    app.task(name=GUARDED_TASK, bind=True, base=GuardedTask, guards=[RateLimit(rate)])(
        taskguard_rate_limited
    )

    def count_deferral(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "name", None) == GUARDED_TASK:
            _client(config.redis_url).incr(config.deferrals_key("taskguard"))

    signals.task_deferred.connect(count_deferral, weak=False, dispatch_uid=config.prefix)
    return app
