"""The drain pool as a Celery worker bootstep.

With ``app.conf.taskguard["drain"] = {"enabled": True, "store": "<url>"}`` each worker runs a
:class:`~taskguard.drain.DrainPool` in its parent process: the step requires the worker's
Pool step, so the threads start after the pool has forked its children, and stop (flushing
their in-flight batches) when the worker shuts down. Several workers cooperate through the
partition leases, each taking its share.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from taskguard.backend.redis import RedisBackend
from taskguard.errors import ConfigurationError

from .config import DrainSettings
from .pool import DrainPool

__all__ = ["DrainStep", "pool_from_settings"]

logger = logging.getLogger("taskguard.drain")


def pool_from_settings(backend: Any, settings: DrainSettings) -> DrainPool:
    """A drain pool (not started) writing to ``settings.store``.

    Raises:
        ConfigurationError: The backend is not Redis, or the store cannot be built.
    """
    if not isinstance(backend, RedisBackend):
        raise ConfigurationError(
            "the drain pool needs guard state in Redis (redis_url), not memory://",
            field="drain.enabled",
        )
    if not settings.store:
        raise ConfigurationError("a store URL is needed", field="drain.store")
    from taskguard.sinks.sql import SQLStore

    try:
        store = SQLStore(settings.store, table=settings.table or "taskguard_kv")
    except ConfigurationError as exc:
        raise ConfigurationError(exc.reason, field="drain.store") from exc
    return DrainPool(
        backend,
        store,
        namespaces=settings.namespaces or None,
        workers=settings.workers,
        batch_size=settings.batch_size,
        linger=settings.linger,
        lease_ttl=settings.lease_ttl,
        max_deliveries=settings.max_deliveries,
        claim_idle=settings.claim_idle,
        backoff_base=settings.backoff_base,
        backoff_max=settings.backoff_max,
    )


class DrainStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: run a drain pool in the worker parent when ``drain.enabled``."""

    name = "taskguard.drain"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.drain: DrainPool | None = None
        self.settings: DrainSettings | None = None

    def include_if(self, worker: Any) -> bool:
        from taskguard.runtime import runtime_for

        self.settings = runtime_for(worker.app).settings.drain
        return self.settings.enabled

    def create(self, worker: Any) -> DrainStep:
        from taskguard.runtime import runtime_for

        runtime = runtime_for(worker.app)
        assert self.settings is not None  # set by include_if
        self.drain = pool_from_settings(runtime.backend, self.settings)
        return self

    def start(self, worker: Any) -> None:
        if self.drain is not None:
            self.drain.start()

    def stop(self, worker: Any) -> None:
        if self.drain is not None and self.settings is not None:
            self.drain.stop(self.settings.stop_timeout)

    def terminate(self, worker: Any) -> None:
        if self.drain is not None:
            self.drain.stop(1.0)
