"""The asyncio calendar quota: :class:`~taskguard.QuotaLimiter`'s windows, awaited.

It takes calls with the op the sync limiter builds (``Quota.op``: the same key, window
starts and run-time allowance lookup, through ``quota.lua``), so a quota named ``"sms"``
in a Celery worker and one named ``"sms"`` in a FastAPI service count one allowance per
key and window.
"""

from __future__ import annotations

from taskguard.guards.keying import key_text
from taskguard.guards.quota import Quota

from .base import AsyncBackend
from .decision import Acquiring, AsyncDecision, admit

__all__ = ["AsyncQuotaLimiter"]


class AsyncQuotaLimiter:
    """Runs a :class:`~taskguard.Quota` from asyncio code.

    Build one with ``taskguard.aio.connect(url).quota(name, "10000/day", ...)``.

    Example:
        >>> import asyncio, taskguard.aio
        >>> sms = taskguard.aio.connect("memory://").quota("sms", "2/day")
        >>> async def main():
        ...     taken = [(await sms.try_acquire(key="+4411")).allowed for _ in range(3)]
        ...     return taken, await sms.remaining(key="+4499")
        >>> asyncio.run(main())
        ([True, True, False], 2)
    """

    def __init__(self, backend: AsyncBackend, spec: Quota) -> None:
        self.backend = backend
        self.spec = spec
        self._specs = (spec,)

    def __repr__(self) -> str:
        return f"<AsyncQuotaLimiter {self.spec!r} on {self.backend!r}>"

    async def try_acquire(
        self, key: str | int | None = None, cost: int | None = None
    ) -> AsyncDecision:
        """Take ``cost`` calls (default: the spec's) from ``key``'s quota if they are left;
        ``remaining`` is what is left in the window, ``retry_after`` the seconds until
        the reset when refused.

        Raises:
            TypeError: ``key`` is not a str, an int or None.
        """
        bucket = None if key is None else key_text(key)
        op = self.spec.op(self.backend.keys, bucket, cost, now=self.backend.now())
        outcome = await admit(self.backend, self._specs, [op])
        result = outcome.admission
        left = result.tokens[0] if result.allowed and result.tokens else 0
        return AsyncDecision(
            result.allowed,
            retry_after=result.retry_after,
            remaining=left if not outcome.degraded else -1,
            key=bucket,
            degraded=outcome.degraded,
        )

    def acquire(
        self, key: str | int | None = None, cost: int | None = None
    ) -> Acquiring[AsyncDecision]:
        """Like :meth:`try_acquire`, but a refusal raises (a quota is not waited for: its
        reset can be hours away): ``await quota.acquire(...)`` or ``async with``.

        Raises:
            RateLimited: The quota is used up until its reset (``retry_after``).
            BackendUnavailable: The backend is down and the policy is ``deny``.
        """

        async def acquire() -> AsyncDecision:
            decision = await self.try_acquire(key, cost)
            if decision.allowed:
                return decision
            raise self.spec.refusal(decision.retry_after, decision.key, decision.degraded)

        return Acquiring(acquire)

    async def remaining(self, key: str | int | None = None) -> int:
        """Calls left in ``key``'s quota in the current window (-1 if unknown: offline)."""
        return (await self.try_acquire(key, cost=0)).remaining
