"""GuardedTask: a Celery task whose guards are admitted in one round trip at start.

Admission wraps the task body in ``__call__``, which Celery's tracer calls for any task
class that overrides it. Wrapping the body (rather than using ``after_return`` or
``task_prerun``) is what makes release run on *every* outcome: success, exception, the
user's ``self.retry()``, ``Ignore``, ``Reject`` and a soft time limit all unwind through it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded

from taskguard import signals
from taskguard.backend.ops import Op, RateOp
from taskguard.deferral import DeferralState, defer
from taskguard.guards.admission import admit
from taskguard.guards.base import Guard
from taskguard.runtime import runtime_for
from taskguard.settings import TaskSettings

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

    @functools.cached_property
    def _taskguard_settings(self) -> TaskSettings:
        return runtime_for(self.app).task_settings(self)

    @property
    def taskguard_settings(self) -> TaskSettings:
        """This task's effective, validated configuration (resolved once per process)."""
        return self._taskguard_settings

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        config = self.taskguard_settings
        if not (config.enabled and config.guards):
            return super().__call__(*args, **kwargs)
        guards = self._taskguard_admit(config, request, args, kwargs)
        started = time.monotonic()
        outcome = "aborted"
        try:
            result = super().__call__(*args, **kwargs)
            outcome = "success"
            return result
        except Exception as exc:
            outcome = _outcome_of(exc)
            raise
        finally:
            self._taskguard_release(request, guards, outcome, time.monotonic() - started)

    def _taskguard_release(
        self, request: Any, guards: Sequence[Guard], outcome: str, duration: float
    ) -> None:
        # Rate-limit tokens are spent, not held, so a task guarded only by rate limits has
        # nothing to give back and this costs no round trip. Guards that hold something
        # (locks, concurrency slots) and the breaker's outcome recording return it here,
        # in one call, on every outcome.
        if signals.guard_released.receivers:
            signals.guard_released.send(
                sender=self,
                task_id=request.id,
                guards=guards,
                outcome=outcome,
                duration=duration,
            )

    def _taskguard_admit(
        self, config: TaskSettings, request: Any, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> list[Guard]:
        """Admit the task or defer it (raising Ignore); returns the guards admitted."""
        backend = runtime_for(self.app).backend
        state = DeferralState.from_headers(request.headers)
        all_ops = [guard.op(backend.keys, args, kwargs) for guard in config.guards]
        paid = state.honoured(
            all_ops,
            now=time.time(),
            retries=request.retries,
            grace=config.deferral.reservation_grace,
        )
        guards: list[Guard] = []
        ops: list[Op] = []
        for guard, op in zip(config.guards, all_ops, strict=True):
            if op.key not in paid:  # a bucket whose slot this message already holds
                guards.append(guard)
                ops.append(op)
        eager = bool(request.is_eager)
        reserve_within = (
            0.0 if eager else min(config.deferral.reserve_within, config.deferral.max_delay)
        )
        outcome = admit(backend, guards, ops, reserve_within=reserve_within)
        result = outcome.admission
        if result.allowed:
            if signals.guard_acquired.receivers:
                signals.guard_acquired.send(
                    sender=self, task_id=request.id, guards=guards, degraded=outcome.degraded
                )
            return guards

        denied = guards[result.denied or 0]
        key = ops[result.denied or 0].key
        signals.guard_denied.send(
            sender=self,
            task_id=request.id,
            guard=denied,
            key=key,
            retry_after=result.retry_after,
            degraded=outcome.degraded,
        )
        if eager:
            raise denied.denied_error(result.retry_after, key)
        reserved = [op.key for op in ops if isinstance(op, RateOp)] if result.reserved else []
        defer(
            self,
            retry_after=result.retry_after,
            reserved=reserved,
            state=state,
            policy=config.deferral,
            reason=f"{denied!r} on {key}" + (" (backend unavailable)" if outcome.degraded else ""),
        )
        raise AssertionError("unreachable: defer() always raises")  # pragma: no cover


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
