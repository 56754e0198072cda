"""The asyncio rate limiter: :class:`~taskguard.RateLimiter`'s GCRA buckets, awaited.

It takes tokens with the ops the sync limiter builds (``RateLimit.op``), so a limiter
named ``"api"`` in a Celery worker and one named ``"api"`` in a FastAPI service spend
one bucket per key, and the limit holds across both.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from taskguard.backend.ops import RateOp
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.guards.keying import bucket_tag, key_text
from taskguard.guards.pause import Pause, observed_pause, pause_offline, pause_seconds
from taskguard.guards.ratelimit import RateLimit
from taskguard.guards.ratelimiter import call_bucket, limiter_op

from .base import AsyncBackend
from .decision import Acquiring, AsyncDecision, admit

__all__ = ["AsyncRateLimiter"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class AsyncRateLimiter:
    """Runs a :class:`~taskguard.RateLimit` from asyncio code.

    Build one with ``taskguard.aio.connect(url).rate_limiter(name, rate, burst=...)``.

    Example:
        >>> import asyncio, taskguard.aio
        >>> limiter = taskguard.aio.connect("memory://").rate_limiter("sms", "2/s", burst=2)
        >>> async def main():
        ...     return [(await limiter.try_acquire(key="+4411")).allowed for _ in range(3)]
        >>> asyncio.run(main())
        [True, True, False]
    """

    def __init__(self, backend: AsyncBackend, spec: RateLimit) -> None:
        self.backend = backend
        self.spec = spec
        self._specs = (spec,)
        self._ops: dict[tuple[str | None, int, str | None], RateOp] = {}

    def __repr__(self) -> str:
        return f"<AsyncRateLimiter {self.spec!r} on {self.backend!r}>"

    async def try_acquire(
        self, key: str | int | None = None, cost: int = 1, *, tag: str | int | None = None
    ) -> AsyncDecision:
        """Take ``cost`` tokens from ``key``'s bucket if they are there, without waiting.
        ``tag`` (here and in every method): as in :meth:`taskguard.RateLimiter.try_acquire`.

        Raises:
            TypeError: ``key`` is not a str, an int or None.
        """
        bucket = None if key is None else key_text(key)
        return await self._decide(bucket, cost, reserve=0.0, tag=tag)

    def acquire(
        self,
        key: str | int | None = None,
        cost: int = 1,
        timeout: float | None = None,
        *,
        tag: str | int | None = None,
    ) -> Acquiring[AsyncDecision]:
        """Take ``cost`` tokens, waiting up to ``timeout`` seconds (None: as long as needed):
        ``await limiter.acquire(...)`` or ``async with limiter.acquire(...):``.

        When tokens are short the limiter reserves the exact future slot in the same call
        and sleeps (``asyncio.sleep``) until it; no polling.

        Raises:
            RateLimited: The tokens would not be there within ``timeout``.
            BackendUnavailable: The backend is down and the policy is ``deny``.
            TypeError: ``key`` is not a str, an int or None.
        """
        bucket = None if key is None else key_text(key)
        reserve = 1e9 if timeout is None else max(timeout, 0.0)

        async def acquire() -> AsyncDecision:
            decision = await self._decide(bucket, cost, reserve=reserve, tag=tag)
            if decision.allowed:
                return decision
            raise self.spec.refusal(decision.retry_after, bucket, decision.degraded)

        return Acquiring(acquire)

    async def pause(
        self,
        key: str | int | None,
        seconds: float | timedelta | str,
        *,
        tag: str | int | None = None,
    ) -> Pause:
        """Refuse every call of ``key``'s bucket for ``seconds``, in every process (both
        APIs); see :meth:`taskguard.RateLimiter.pause`.

        Raises:
            ValueError: ``seconds`` is not a duration from 0 to 31 days.
            BackendError: Redis refused for a reason that is not an outage.
        """
        bucket = None if key is None else key_text(key)
        keys = self.backend.keys
        tag = bucket_tag(self.spec, keys.spread, bucket, tag)
        op = self.spec.pause_op(keys, bucket, pause_seconds(seconds), tag)
        try:
            admission = await self.backend.admit([op])
        except BackendUnavailable as exc:
            offline = self.backend.offline
            return pause_offline(lambda: offline, op, exc, bucket, self.spec.on_outage)
        except BackendError as exc:
            raise exc.naming((f"pause of {op.key}",)) from exc.__cause__
        return Pause(bucket, admission.tokens[0] / 1_000_000)

    async def observe(
        self,
        key: str | int | None = None,
        *,
        remaining: int | str,
        reset_at: float | str | datetime | None = None,
        reset_after: float | str | timedelta | None = None,
        pace: bool = False,
        tag: str | int | None = None,
    ) -> Pause:
        """Follow the service's rate-limit headers for ``key``'s bucket; see
        :meth:`taskguard.RateLimiter.observe`."""
        seconds = observed_pause(
            remaining=remaining,
            reset_at=reset_at,
            reset_after=reset_after,
            pace=pace,
            now=self.backend.now(),
        )
        if not seconds:
            return Pause(None if key is None else key_text(key))
        return await self.pause(key, seconds, tag=tag)

    def _op(self, key: str | None, cost: int, tag: str | int | None) -> RateOp:
        return limiter_op(self.spec, self.backend.keys, self._ops, (key, cost, tag))

    async def _decide(
        self, key: str | None, cost: int, *, reserve: float, tag: str | int | None
    ) -> AsyncDecision:
        ops = [self._op(key, cost, tag)]
        outcome = await admit(self.backend, self._specs, ops, reserve_within=reserve)
        result = outcome.admission
        if result.reserved:
            await self.backend.sleep(result.retry_after)
            return AsyncDecision(True, remaining=0, key=key, degraded=outcome.degraded)
        return AsyncDecision(
            result.allowed,
            retry_after=result.retry_after,
            remaining=result.remaining,
            key=key,
            degraded=outcome.degraded,
        )

    async def __aenter__(self) -> AsyncDecision:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __call__(self, func: F) -> F:
        """Use as a decorator on an ``async`` function: each call waits for a token; the
        bucket comes from the spec's key (a template over the function's arguments)."""
        signature = inspect.signature(func)

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            key, tag = call_bucket(self.spec, args, kwargs, signature)
            await self.acquire(key=key, tag=tag)
            return await func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
