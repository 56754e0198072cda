"""GuardedTask: a Celery task whose guards are admitted in one round trip at start.

Admission wraps the task body in ``__call__``, which Celery's tracer calls for any task
class that overrides it. Wrapping the body (rather than using ``after_return`` or
``task_prerun``) is what makes release run on *every* outcome: success, exception, the
user's ``self.retry()``, ``Ignore``, ``Reject`` and a soft time limit all unwind through it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded

from taskguard.backend.base import Backend
from taskguard.guards.base import Guard
from taskguard.guards.lock import Lock

from . import _bootsteps  # noqa: F401 - connects the worker bootsteps and fork handler
from ._feedback import DeferredRun, RunGuards, kept_for_deferral
from ._release import release_run
from ._runs import admit_run
from ._runtime import runtime_for
from ._settings import TaskSettings
from ._uniqueness import publish_unique

__all__ = ["GuardedTask"]


class GuardedTask(Task):  # type: ignore[misc]
    """Base class for tasks with fleet-wide guards.

    Guards come from the ``guards`` class attribute (or ``@app.task(base=GuardedTask,
    guards=[...])``) and are overridden per task by the ``taskguard`` settings.

    Example:
        >>> from celery import Celery
        >>> from taskguard import GuardedTask, RateLimit
        >>> app = Celery("proj", broker="memory://")
        >>> @app.task(base=GuardedTask, guards=[RateLimit("100/m", key="{customer_id}")])
        ... def sync_customer(customer_id): ...

    A denied task is deferred (re-published with the same id after ``retry_after``)
    without spending ``max_retries``. Calling the task function directly
    (``sync_customer(1)``) runs it unguarded; in eager mode a denial raises the guard's
    :class:`~taskguard.errors.GuardDenied` subclass instead of deferring.
    """

    #: The task's guards, in any order; admission checks them in one call.
    guards: ClassVar[Sequence[Guard]] = ()
    #: Guards evaluated and counted but never enforced (shadow mode, to roll a limit out).
    shadow_guards: ClassVar[Sequence[Guard]] = ()
    #: Marks guarded tasks for the runtime (which must not import this module).
    taskguard_guarded: ClassVar[bool] = True

    @functools.cached_property
    def _taskguard_settings(self) -> TaskSettings:
        return runtime_for(self.app).task_settings(self)

    @property
    def taskguard_settings(self) -> TaskSettings:
        """This task's effective, validated configuration (resolved once per process)."""
        return self._taskguard_settings

    @property
    def taskguard_backend(self) -> Backend:
        """Where this task's guard state lives (shared by the app's tasks)."""
        return runtime_for(self.app).backend

    @property
    def taskguard(self) -> RunGuards:
        """The running task's handle on taskguard (in a bound task, ``self.taskguard``):
        ``pause()`` a rate limit after an HTTP 429, ``observe()`` the service's
        rate-limit headers, ``defer()`` this run without spending a retry.

        Example:
            >>> @app.task(bind=True, base=GuardedTask, guards=[partner])  # doctest: +SKIP
            ... def push_order(self, order_id):
            ...     response = session.post(...)
            ...     if response.status_code == 429:
            ...         retry_after = response.headers["Retry-After"]
            ...         self.taskguard.pause("partner-api", seconds=retry_after, defer=True)
        """
        return RunGuards(self, self.request)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        config = self.taskguard_settings
        if not (config.enabled and (config.guards or config.shadow)):
            return super().__call__(*args, **kwargs)
        run = admit_run(self, config, request, args, kwargs)
        outcome, error = "aborted", None
        try:
            result = super().__call__(*args, **kwargs)
            outcome = "success"
            return result
        except Exception as exc:
            outcome, error = _outcome_of(exc), exc
            if isinstance(exc, DeferredRun):
                # Ended by self.taskguard.defer(): the message comes back, with its claims.
                run = kept_for_deferral(run)
            raise
        finally:
            release_run(self, request, run, outcome, error)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Publish the task; publish-time uniqueness (``Lock(mode="until_...")``) first."""
        config = self.taskguard_settings
        unique = any(isinstance(g, Lock) and g.at_publish for g in config.guards)
        # A deferral or retry re-publishes the running message itself: its claim is its
        # own already, and must not stop it (nor fail it while Redis is down).
        republish = options.get("task_id") is not None and options["task_id"] == self.request.id
        if not (config.enabled and unique) or republish:
            return super().apply_async(args, kwargs, **options)
        return publish_unique(
            self, config, args=args, kwargs=kwargs, options=options, publish=super().apply_async
        )


def _outcome_of(exc: Exception) -> str:
    """How a task run ended, for the release path and the breaker."""
    if isinstance(exc, Retry):
        return "retry"
    if isinstance(exc, Ignore):
        return "ignored"
    if isinstance(exc, Reject):
        return "rejected"
    if isinstance(exc, SoftTimeLimitExceeded):
        return "soft_time_limit"
    return "failure"
