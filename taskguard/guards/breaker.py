"""Circuit breakers shared by the whole fleet: Resilience4j's semantics, atomic in Redis.

State lives in Redis under the breaker's name, and every transition happens inside the
admission and release scripts (lib/breaker.lua), with time from Redis ``TIME``. Half-open
probes are leases, so a probe whose worker dies frees its permit within ``probe_ttl``.

States: CLOSED (calls pass; outcomes fill a sliding window) -> OPEN (calls refused until
``open_for`` passes; it grows on repeated opens) -> HALF_OPEN (``half_open_probes``
probes fleet-wide; ``successes_to_close`` successes close it, one failure re-opens it).

This module runs a breaker outside of Celery (:class:`Breaker`). Its settings,
:class:`~taskguard.guards.breaker_spec.CircuitBreaker`, are re-exported here; its state
changes are announced by :mod:`taskguard.guards.breaker_events`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from taskguard.backend.memory import local_backend
from taskguard.backend.ops import BreakerOp, new_owner
from taskguard.errors import BackendError, BackendUnavailable

from .admission import Outcome, admit
from .base import Decision
from .breaker_events import OPENED_HALF, TRANSITIONS, announce
from .breaker_spec import CircuitBreaker

if TYPE_CHECKING:
    from taskguard.backend.base import Backend

__all__ = ["TRANSITIONS", "Breaker", "BreakerCall", "CircuitBreaker"]

logger = logging.getLogger("taskguard.breaker")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class BreakerCall:
    """One admitted call: report how it went with :meth:`record` (exactly once)."""

    def __init__(
        self, breaker: Breaker, op: BreakerOp, probe: bool, backend: Backend | None = None
    ) -> None:
        self.breaker = breaker
        self.op = op
        self.probe = probe
        # Where the call was admitted: the breaker's backend, or the process-local one
        # under the ``local`` outage policy.
        self.backend = backend or breaker.backend
        self.started = time.monotonic()
        self._recorded = False

    def record(self, exc: BaseException | None = None, duration: float | None = None) -> None:
        """Record the outcome: ``exc`` raised (None: success) after ``duration`` seconds.

        Never raises: if Redis went away since the call was admitted, the outcome is
        logged and lost (the call's own result matters more).
        """
        if self._recorded:
            return
        self._recorded = True
        spent = time.monotonic() - self.started if duration is None else duration
        code = self.breaker.spec.outcome(exc, spent)
        try:
            [transition] = self.backend.release([_with_mode(self.op, code)])
        except BackendUnavailable as down:
            logger.warning("circuit %r: outcome not recorded: %s", self.breaker.spec.name, down)
            return
        except BackendError as refused:
            logger.error("circuit %r: outcome not recorded: %s", self.breaker.spec.name, refused)
            return
        self.breaker.transitioned(transition)

    def release(self) -> bool:
        """Record a success."""
        self.record()
        return True

    def release_after(self, exc: BaseException | None) -> None:
        """Record how a ``with decision:`` block ended: its exception, or success."""
        self.record(exc)


def _with_mode(op: BreakerOp, mode: str) -> BreakerOp:
    return BreakerOp(op.key, op.window_key, op.probes_key, op.owner, mode, op.params, op.probe_ttl)


class Breaker:
    """A fleet-wide breaker outside of Celery: ``taskguard.connect(url).circuit_breaker()``.

    Example:
        >>> import taskguard
        >>> breaker = taskguard.connect("memory://").circuit_breaker(
        ...     "partner-api", consecutive_failures=2, open_for=30)
        >>> def flaky():
        ...     raise ConnectionError("down")
        >>> for _ in range(2):
        ...     try:
        ...         breaker.call(flaky)
        ...     except ConnectionError:
        ...         pass
        >>> breaker.state
        'open'
        >>> breaker.call(flaky)
        Traceback (most recent call last):
        taskguard.errors.CircuitOpen: circuit 'partner-api' is open; next probe in 30.0s
    """

    def __init__(self, backend: Backend, spec: CircuitBreaker) -> None:
        self.backend = backend
        self.spec = spec
        self._specs = (spec,)
        # Everything of a call's op but its owner, built once: keys and settings are fixed.
        template = spec.call_op(backend.keys, "-")
        self._op_parts = (template.key, template.window_key, template.probes_key)
        self._params = template.params

    def __repr__(self) -> str:
        return f"<Breaker {self.spec.name!r} on {self.backend!r}>"

    def transitioned(self, code: int, task_id: str | None = None) -> None:
        """Announce a transition made by a release (no-op for 0)."""
        if code in TRANSITIONS:
            announce(self.spec.name, *TRANSITIONS[code], task_id=task_id)

    def _admit(self) -> tuple[Outcome, BreakerCall | None]:
        """Ask to make a call: the outcome, and when admitted the call to record (None
        when there is nothing to record: the ``allow`` policy while Redis is down)."""
        a, b, c = self._op_parts
        op = BreakerOp(a, b, c, new_owner(), "check", self._params, self.spec.probe_ttl)
        outcome = admit(self.backend, self._specs, [op])
        result = outcome.admission
        if not result.allowed:
            return outcome, None
        token = result.tokens[0] if result.tokens else 0
        if token == 2:
            announce(self.spec.name, *OPENED_HALF)
        if outcome.degraded and not outcome.local:  # `allow` offline: nothing to record
            return outcome, None
        backend = local_backend(self.backend) if outcome.degraded else self.backend
        return outcome, BreakerCall(self, op, token > 0, backend)

    def try_acquire(self) -> Decision:
        """Ask to make a call; an allowed decision carries the call to record."""
        outcome, call = self._admit()
        result = outcome.admission
        return Decision(
            result.allowed,
            retry_after=result.retry_after,
            key=self.spec.name,
            degraded=outcome.degraded,
            lease=call,
        )

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` through the breaker (the seed's ``execute``).

        Raises:
            CircuitOpen: The breaker is open (or half-open with every probe taken).
        """
        outcome, call = self._admit()
        if not outcome.admission.allowed:
            retry_after = outcome.admission.retry_after
            if outcome.degraded and self.spec.on_outage == "deny":
                raise BackendUnavailable(
                    f"circuit {self.spec.name!r}: backend unreachable and on_outage='deny'",
                    retry_after=retry_after,
                )
            raise self.spec.denied_error(retry_after)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.record(exc)
            raise
        if call is not None:
            call.record()
        return result

    def __call__(self, func: F) -> F:
        """Use as a decorator: every call goes through the breaker."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(func, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    @property
    def state(self) -> str:
        """``closed``, ``open``, ``half_open``, ``forced_open`` or ``disabled``."""
        return self.backend.breaker_state(self.spec.call_op(self.backend.keys, "-"))

    def is_open(self) -> bool:
        """True while calls are refused (open or forced open)."""
        return self.state in ("open", "forced_open")

    def force_open(self) -> None:
        """Refuse every call until :meth:`force_close` or :meth:`reset`."""
        self.backend.set_breaker(self.spec.call_op(self.backend.keys, "-"), "force_open")

    def disable(self) -> None:
        """Let every call through and record nothing, until closed or reset."""
        self.backend.set_breaker(self.spec.call_op(self.backend.keys, "-"), "disable")

    def force_close(self) -> None:
        """Close it now, with an empty window."""
        self.backend.set_breaker(self.spec.call_op(self.backend.keys, "-"), "force_close")

    def reset(self) -> None:
        """Forget everything about it (closed, empty window, no growth)."""
        self.backend.set_breaker(self.spec.call_op(self.backend.keys, "-"), "reset")
