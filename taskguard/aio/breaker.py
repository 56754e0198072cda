"""The asyncio circuit breaker: :class:`~taskguard.Breaker`'s state machine, awaited.

The state lives in the same three keys and every transition happens in the same scripts
(``lib/breaker.lua``), so a breaker tripped by Celery tasks or sync calls is open for
asyncio callers of the same name, and their outcomes count in one window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from taskguard.backend.ops import BreakerOp, Held
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.guards.breaker_events import OPENED_HALF, TRANSITIONS, announce
from taskguard.guards.breaker_spec import CircuitBreaker

from .base import AsyncBackend
from .decision import AsyncDecision, admit

__all__ = ["AsyncBreaker", "AsyncBreakerCall"]

logger = logging.getLogger("taskguard.breaker")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")

_Release = Callable[[Sequence[Held]], Awaitable[list[int]]]


class AsyncBreakerCall:
    """One admitted call: report how it went with :meth:`record` (exactly once)."""

    def __init__(
        self, breaker: AsyncBreaker, op: BreakerOp, probe: bool, release: _Release
    ) -> None:
        self.breaker = breaker
        self.op = op
        self.probe = probe
        # Where the call was admitted: Redis, or the process-local backend (`local`).
        self._release = release
        self.started = time.monotonic()
        self._recorded = False

    async def record(self, exc: BaseException | None = None, duration: float | None = None) -> None:
        """Record the outcome: ``exc`` raised (None: success) after ``duration`` seconds.

        Never raises: if Redis went away since the call was admitted, the outcome is
        logged and lost (the call's own result matters more).
        """
        if self._recorded:
            return
        self._recorded = True
        spent = time.monotonic() - self.started if duration is None else duration
        op = dataclasses.replace(self.op, mode=self.breaker.spec.outcome(exc, spent))
        name = self.breaker.spec.name
        try:
            [transition] = await self._release([op])
        except BackendUnavailable as down:
            logger.warning("circuit %r: outcome not recorded: %s", name, down)
            return
        except BackendError as refused:
            logger.error("circuit %r: outcome not recorded: %s", name, refused)
            return
        self.breaker.transitioned(transition)

    async def release(self) -> bool:
        """Record a success."""
        await self.record()
        return True

    async def release_after(self, exc: BaseException | None) -> None:
        """Record how an ``async with decision:`` block ended: its exception, or success."""
        await self.record(exc)


class AsyncBreaker:
    """A fleet-wide breaker for asyncio code: ``taskguard.aio.connect(url).circuit_breaker()``.

    ``await breaker.call(coro_fn, *args)`` or ``async with breaker:`` (the block's
    exception, or its success, is the outcome); a refused call raises
    :class:`~taskguard.CircuitOpen`.

    Example:
        >>> import asyncio, taskguard.aio
        >>> breaker = taskguard.aio.connect("memory://").circuit_breaker(
        ...     "partner-api", consecutive_failures=2, open_for=30)
        >>> async def flaky():
        ...     raise ConnectionError("down")
        >>> async def main():
        ...     for _ in range(2):
        ...         try:
        ...             await breaker.call(flaky)
        ...         except ConnectionError:
        ...             pass
        ...     return await breaker.state()
        >>> asyncio.run(main())
        'open'
    """

    def __init__(self, backend: AsyncBackend, spec: CircuitBreaker) -> None:
        self.backend = backend
        self.spec = spec
        # The calls `async with breaker:` admitted, per asyncio task (nesting allowed).
        self._calls: dict[asyncio.Task[Any] | None, list[AsyncBreakerCall | None]] = {}

    def __repr__(self) -> str:
        return f"<AsyncBreaker {self.spec.name!r} on {self.backend!r}>"

    def transitioned(self, code: int) -> None:
        """Announce a transition made by a release (no-op for 0)."""
        if code in TRANSITIONS:
            announce(self.spec.name, *TRANSITIONS[code])

    async def try_acquire(self) -> AsyncDecision:
        """Ask to make a call; an allowed decision carries the call to record."""
        op = self.spec.call_op(self.backend.keys, uuid.uuid4().hex)
        outcome = await admit(self.backend, [self.spec], [op])
        result = outcome.admission
        name = self.spec.name
        if not result.allowed:
            return AsyncDecision(
                False, retry_after=result.retry_after, key=name, degraded=outcome.degraded
            )
        token = result.tokens[0] if result.tokens else 0
        if token == 2:
            announce(name, *OPENED_HALF)
        if outcome.degraded and not outcome.local:  # `allow` offline: nothing to record
            return AsyncDecision(True, key=name, degraded=True)
        release: _Release = self.backend.release
        if outcome.degraded:
            offline = self.backend.offline

            async def release(ops: Sequence[Held]) -> list[int]:
                return offline.release(ops)

        call = AsyncBreakerCall(self, op, token > 0, release)
        return AsyncDecision(True, key=name, degraded=outcome.degraded, lease=call)

    async def _admit(self) -> AsyncBreakerCall | None:
        decision = await self.try_acquire()
        if not decision.allowed:
            if decision.degraded and self.spec.on_outage == "deny":
                raise BackendUnavailable(
                    f"circuit {self.spec.name!r}: backend unreachable and on_outage='deny'",
                    retry_after=decision.retry_after,
                )
            raise self.spec.denied_error(decision.retry_after)
        lease = decision.lease
        return lease if isinstance(lease, AsyncBreakerCall) else None

    async def call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpen: The breaker is open (or half-open with every probe taken).
        """
        call = await self._admit()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            if call is not None:
                await call.record(exc)
            raise
        if call is not None:
            await call.record()
        return result

    async def __aenter__(self) -> AsyncBreaker:
        call = await self._admit()
        self._calls.setdefault(asyncio.current_task(), []).append(call)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        stack = self._calls[task]
        call = stack.pop()
        if not stack:
            del self._calls[task]
        if call is not None:
            await call.record(exc)

    def __call__(self, func: F) -> F:
        """Use as a decorator on an ``async`` function: every call goes through it."""

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await self.call(func, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def _op(self) -> BreakerOp:
        return self.spec.call_op(self.backend.keys, "-")

    async def state(self) -> str:
        """``closed``, ``open``, ``half_open``, ``forced_open`` or ``disabled``."""
        return await self.backend.breaker_state(self._op())

    async def is_open(self) -> bool:
        """True while calls are refused (open or forced open)."""
        return await self.state() in ("open", "forced_open")

    async def force_open(self) -> None:
        """Refuse every call until :meth:`force_close` or :meth:`reset`."""
        await self.backend.set_breaker(self._op(), "force_open")

    async def disable(self) -> None:
        """Let every call through and record nothing, until closed or reset."""
        await self.backend.set_breaker(self._op(), "disable")

    async def force_close(self) -> None:
        """Close it now, with an empty window."""
        await self.backend.set_breaker(self._op(), "force_close")

    async def reset(self) -> None:
        """Forget everything about it (closed, empty window, no growth)."""
        await self.backend.set_breaker(self._op(), "reset")
