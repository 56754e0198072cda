"""Per-app, per-process taskguard state: validated settings and the backend connection.

The worker wiring (bootsteps, the fork handler) lives in :mod:`._bootsteps`.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from taskguard.backend import Backend, backend_from_url
from taskguard.errors import ConfigurationError
from taskguard.guards.base import Guard

from ._events_settings import EventsSettings
from ._settings import Settings, TaskSettings

__all__ = ["Runtime", "runtime_for"]

logger = logging.getLogger("taskguard")

_RUNTIMES: weakref.WeakSet[Runtime] = weakref.WeakSet()
_CREATE_LOCK = threading.Lock()


class Runtime:
    """taskguard's state for one Celery app in this process."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._settings: Settings | None = None
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        """The app's validated settings (read once)."""
        if self._settings is None:
            self._settings = Settings.from_app(self.app)
        return self._settings

    @property
    def backend(self) -> Backend:
        """The shared backend, connected on first use."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._connect()
        return self._backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        self._backend = backend

    @contextmanager
    def using_backend(self, backend: Backend) -> Iterator[Backend]:
        """Keep the app's guard state in ``backend`` inside the block (a test's memory
        backend); the backend before it, connected or not yet, comes back after it."""
        previous = self._backend
        self._backend = backend
        try:
            yield backend
        finally:
            self._backend = previous

    def redis_url(self) -> str:
        """Where guard state lives: the setting, ``$TASKGUARD_REDIS_URL``, a Redis broker
        URL, or ``redis://localhost:6379/0``, in that order."""
        broker = str(self.app.conf.broker_url or "")
        return (
            self.settings.redis_url
            or os.environ.get("TASKGUARD_REDIS_URL")
            or (broker if broker.startswith(("redis://", "rediss://", "unix://")) else None)
            or "redis://localhost:6379/0"
        )

    def _connect(self) -> Backend:
        settings = self.settings
        url = self.redis_url()
        if url.startswith("memory://"):
            return backend_from_url(url, prefix=settings.key_prefix)
        return backend_from_url(
            url,
            prefix=settings.key_prefix,
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.socket_connect_timeout,
            outage_cooldown=settings.outage_cooldown,
            redis_options=dict(settings.redis_options),
        )

    def reload(self) -> None:
        """Forget cached settings and every task's resolved configuration."""
        self._settings = None
        for task in self.guarded_tasks():
            task.__dict__.pop("_taskguard_settings", None)

    def reset_after_fork(self) -> None:
        if self._backend is not None:
            self._backend.reset_after_fork()

    def guarded_tasks(self) -> list[Any]:
        return [t for t in self.app.tasks.values() if getattr(t, "taskguard_guarded", False)]

    def task_settings(self, task: Any) -> TaskSettings:
        """Resolve (and validate) one task's effective settings."""
        guards = _guard_list(task, "guards")
        shadow = _guard_list(task, "shadow_guards")
        try:
            signature: inspect.Signature | None = inspect.signature(task.run)
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            signature = None
        return self.settings.for_task(task.name, guards, signature, shadow_guards=shadow)

    def validate(self) -> list[TaskSettings]:
        """Validate the settings and every guarded task; raise ConfigurationError if bad."""
        resolved = [task.taskguard_settings for task in self.guarded_tasks()]
        EventsSettings.from_app(self.app)  # read by the events step; checked with the rest
        names = [name for name in self.app.tasks if not name.startswith("celery.")]
        for pattern in self.settings.patterns_matching_nothing(names):
            logger.warning("taskguard: settings for %r match no registered task", pattern)
        return resolved


def _guard_list(task: Any, field: str) -> Sequence[Guard]:
    guards = getattr(task, field, ())
    if not isinstance(guards, (list, tuple)):
        raise ConfigurationError(
            f"must be a list of guards, got {type(guards).__name__}", task=task.name, field=field
        )
    for guard in guards:
        if not isinstance(guard, Guard):
            raise ConfigurationError(
                f"must contain guards such as RateLimit(...), got {guard!r}",
                task=task.name,
                field=field,
            )
    return guards


def runtime_for(app: Any) -> Runtime:
    """The :class:`Runtime` of ``app`` in this process (created on first use)."""
    runtime: Runtime | None = app.__dict__.get("_taskguard_runtime")
    if runtime is None:
        with _CREATE_LOCK:
            runtime = app.__dict__.get("_taskguard_runtime")
            if runtime is None:
                runtime = Runtime(app)
                app.__dict__["_taskguard_runtime"] = runtime
                _RUNTIMES.add(runtime)
    return runtime


def reset_all_after_fork() -> None:
    """Rebuild every runtime's connections in a freshly forked process."""
    for runtime in list(_RUNTIMES):
        runtime.reset_after_fork()
