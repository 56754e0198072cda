"""The asyncio lock and semaphore: the sync ones' ops and keys, awaited.

:class:`AsyncLock` takes the lease :class:`~taskguard.DistributedLock` takes (same key,
same fence, same wake-up list), so the two exclude each other and share one sequence of
fencing tokens; :class:`AsyncSemaphore` holds the slots :class:`~taskguard.Semaphore`
holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from taskguard._validate import count, seconds
from taskguard._validate import name as check_name
from taskguard.backend.ops import LeaseOp
from taskguard.errors import ConcurrencyLimitReached, LockHeld
from taskguard.guards.concurrency import Concurrency

from .base import AsyncBackend
from .decision import AsyncDecision
from .leases import AsyncHeldLease, AsyncLeasedPrimitive

__all__ = ["AsyncLock", "AsyncSemaphore"]

T = TypeVar("T")


class AsyncLock(AsyncLeasedPrimitive):
    """A named lock for asyncio code: ``taskguard.aio.connect(url).lock(name)``.

    Example:
        >>> import asyncio, taskguard.aio
        >>> lock = taskguard.aio.connect("memory://").lock("report:42", ttl=30)
        >>> async def main():
        ...     async with lock as held:
        ...         return held.fencing_token > 0, (await lock.try_acquire()).allowed
        >>> asyncio.run(main())
        (True, False)
    """

    def __init__(
        self, backend: AsyncBackend, name: str, *, ttl: float = 30.0, renew: bool = True
    ) -> None:
        self.backend = backend
        self.name = check_name(name, "name")
        self.ttl = seconds(ttl, "ttl")
        self.renew = renew
        super().__init__()
        keys = backend.keys
        self._keys = (keys.lock(name), keys.fence(name), keys.wakeup(name))

    def __repr__(self) -> str:
        return f"<AsyncLock {self.name!r} ttl={self.ttl} on {self.backend!r}>"

    def _lease(self) -> LeaseOp:
        # DistributedLock's lease, field for field.
        return LeaseOp(
            self._keys[0],
            owner=uuid.uuid4().hex,
            ttl=self.ttl,
            fence_key=self._keys[1],
            wakeup_key=self._keys[2],
        )

    async def try_acquire(self) -> AsyncDecision:
        """Take the lock if it is free; the decision carries the token and the lease.

        Raises:
            BackendUnavailable: Redis is unreachable (as the sync lock).
        """
        lease = self._lease()
        result = await self.backend.admit([lease])
        if not result.allowed:
            return AsyncDecision(False, retry_after=result.retry_after, key=self.name)
        held = AsyncHeldLease(self.backend, lease, result.tokens[0], renew=self.renew)
        return AsyncDecision(True, key=self.name, token=held.fencing_token, lease=held)

    @property
    def _wakeup_key(self) -> str:
        return self._keys[2]

    def _refused(self, retry_after: float) -> LockHeld:
        return LockHeld(f"lock {self.name!r} is held", key=self.name, retry_after=retry_after)

    async def locked(self) -> bool:
        """True while someone holds the lock (through either API)."""
        return await self.backend.owner(self._keys[0]) is not None


class AsyncSemaphore(AsyncLeasedPrimitive):
    """A fleet-wide semaphore for asyncio code: ``taskguard.aio.connect(url).semaphore()``.

    ``limit`` may be changed on the object at any time, as on the sync one.

    Example:
        >>> import asyncio, taskguard.aio
        >>> heavy = taskguard.aio.connect("memory://").semaphore("heavy", limit=2)
        >>> async def double(n):
        ...     return 2 * n
        >>> async def main():
        ...     async with heavy.acquire(timeout=1):
        ...         free = (await heavy.try_acquire()).allowed
        ...     return free, await heavy.run(double, 21)
        >>> asyncio.run(main())
        (True, 42)
    """

    def __init__(
        self,
        backend: AsyncBackend,
        name: str,
        *,
        limit: int,
        ttl: float = 60.0,
        renew: bool = True,
    ) -> None:
        self.backend = backend
        self.name = check_name(name, "name")
        self.limit = count(limit, "limit")
        self.ttl = seconds(ttl, "ttl")
        self.renew = renew
        super().__init__()

    def __repr__(self) -> str:
        return f"<AsyncSemaphore {self.name!r} limit={self.limit} on {self.backend!r}>"

    def _spec(self) -> Concurrency:
        # The spec the sync Semaphore builds its slot op from (rebuilt when `limit` moves).
        spec = self.__dict__.get("_cached_spec")
        if spec is None or spec.limit != self.limit:
            spec = self.__dict__["_cached_spec"] = Concurrency(
                self.limit, ttl=self.ttl, name=self.name
            )
        return spec

    async def try_acquire(self) -> AsyncDecision:
        """Take a slot if one is free; the decision carries the lease to release.

        Raises:
            BackendUnavailable: Redis is unreachable (as the sync semaphore).
        """
        op = self._spec().slot_op(self.backend.keys, None, uuid.uuid4().hex, park=False)
        result = await self.backend.admit([op])
        if not result.allowed:
            return AsyncDecision(False, retry_after=result.retry_after, key=self.name)
        held = AsyncHeldLease(self.backend, op, renew=self.renew)
        return AsyncDecision(True, key=self.name, lease=held)

    @property
    def _wakeup_key(self) -> str:
        return self.backend.keys.slot_wakeup(self.name)

    def _refused(self, retry_after: float) -> ConcurrencyLimitReached:
        return ConcurrencyLimitReached(
            f"all {self.limit} slots of {self.name!r} are taken",
            key=self.name,
            retry_after=retry_after,
        )

    async def run(
        self,
        func: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Await ``func(*args, **kwargs)`` holding a slot."""
        async with self.acquire(timeout):
            return await func(*args, **kwargs)
