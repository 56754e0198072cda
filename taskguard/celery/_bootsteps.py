"""taskguard in the Celery worker: bootsteps and the fork handler.

- :class:`ValidateStep` validates the settings and every guarded task when the worker
  starts, so bad settings stop the worker with a ConfigurationError naming the task and
  the field (exceptions raised by signal handlers are only logged, bootsteps are not).
  It also checks that the Redis user may run what taskguard needs (one probe script and
  one ``MULTI``/``BLPOP``/``EXEC``); a missing permission stops the worker too.
- :class:`DrainStep` runs a :class:`~taskguard.drain.DrainPool` in the worker's parent
  process when ``drain.enabled``: it requires the worker's Pool step, so its threads start
  after the pool has forked its children, and stop (flushing their in-flight batches) when
  the worker shuts down. Several workers cooperate through the partition leases.
- :class:`SweepStep` makes the worker consume the deferral lane of each of its queues and
  runs the parked-task sweeper in the worker's parent process (see :mod:`._parking`).
- A ``worker_process_init`` handler rebuilds connections in each forked pool process.
- A ``before_task_publish`` handler stamps each new message with its publish time
  (``taskguard-published-at``), by which :class:`~taskguard.Debounce` tells the newest call.

Importing this module connects the handlers; :mod:`._task` imports it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.signals import before_task_publish, task_revoked, worker_init, worker_process_init

from taskguard.backend.acl import acl_rules, missing_permissions
from taskguard.backend.base import Backend
from taskguard.backend.redis import RedisBackend
from taskguard.drain import DrainPool, DrainSettings, pool_from_settings
from taskguard.errors import BackendUnavailable, ConfigurationError
from taskguard.guards.debounce import stamp_publish
from taskguard.urls import redact

from ._parking import Sweeper, add_lanes, drop_revoked
from ._pools import check_pool
from ._runtime import reset_all_after_fork, runtime_for

__all__ = ["DrainStep", "SweepStep", "ValidateStep", "check_backend", "pool_from_settings"]

logger = logging.getLogger("taskguard")


class ValidateStep(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: validate taskguard settings and tasks before consuming anything."""

    name = "taskguard.validate"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        runtime = runtime_for(worker.app)
        resolved = runtime.validate()
        guarded = sum(1 for t in resolved if t.guards and t.enabled)
        check_pool(worker.pool_cls, [t.name for t in resolved if t.guards and t.enabled])
        where = redact(runtime.redis_url())
        logger.info("taskguard: %d guarded task(s) validated; guard state in %s", guarded, where)
        drain = runtime.settings.drain.enabled
        if guarded or drain:
            check_backend(runtime.backend, where, streams=drain)


def check_backend(backend: Backend, where: str, *, streams: bool) -> None:
    """Refuse to start if the Redis user may not run what taskguard needs.

    Redis being down only logs an error (the outage policies will decide); a missing
    permission or a wrong password raises :class:`ConfigurationError`, naming what is
    missing: every admission would fail with it.
    """
    try:
        if isinstance(backend, RedisBackend):
            missing = missing_permissions(backend, streams=streams)
        else:
            backend.ping()
            missing = []
    except BackendUnavailable as exc:
        logger.error(
            "taskguard: guard backend %s is unreachable at worker start (%s); "
            "guards follow their on_outage policy until it answers",
            where,
            exc,
        )
        return
    if missing:
        rules = " ".join(acl_rules(backend.keys.prefix))
        raise ConfigurationError(
            f"the Redis user of {where} may not run what taskguard needs: "
            f"{'; '.join(missing)}. Grant it (docs/security.md): "
            f"ACL SETUSER <user> reset on ><password> {rules}",
            field="redis_url",
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
        self.settings = runtime_for(worker.app).settings.drain
        return self.settings.enabled

    def create(self, worker: Any) -> DrainStep:
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


class SweepStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: consume the deferral lanes, and sweep parked tasks (guarded
    workers only). Created before the consumer, so the lanes are among its queues."""

    name = "taskguard.sweep"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.sweeper: Sweeper | None = None

    def include_if(self, worker: Any) -> bool:
        runtime = runtime_for(worker.app)
        return any(t.guards and t.enabled for t in runtime.validate())

    def create(self, worker: Any) -> SweepStep:
        lanes = add_lanes(worker.app)
        if lanes:
            logger.info("taskguard: also consuming the deferral lane(s) %s", ", ".join(lanes))
        self.sweeper = Sweeper(worker.app, runtime_for(worker.app).backend)
        return self

    def start(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.start()

    def stop(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()

    def terminate(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stop(1.0)


def _install_worker_steps(sender: Any = None, **kwargs: Any) -> None:
    # worker_init fires just before the worker builds its blueprint from app.steps.
    app = getattr(sender, "app", None)
    if app is not None:
        app.steps["worker"].add(ValidateStep)
        app.steps["worker"].add(DrainStep)
        app.steps["worker"].add(SweepStep)


def _reset_after_fork(**kwargs: Any) -> None:
    reset_all_after_fork()


def _revoked(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    if request is not None and getattr(sender, "taskguard_guarded", False):
        drop_revoked(sender, request)


worker_init.connect(_install_worker_steps, weak=False)
task_revoked.connect(_revoked, weak=False)
# Debounce tells the newer of two calls by when they were published, not delivered.
before_task_publish.connect(stamp_publish, weak=False)
worker_process_init.connect(_reset_after_fork, weak=False)
