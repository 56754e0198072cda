"""What the asyncio lock and semaphore share: a held lease, and waiting for one.

The asyncio twin of :mod:`taskguard.guards.leases`: the same ops, the same wake-up lists
(a release pushes, a waiter ``BLPOP``\\ s, whichever API either side uses), leases renewed
by the backend's :class:`~taskguard.aio.heartbeat.AsyncHeartbeat` instead of a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from taskguard.backend.ops import LeaseOp, SlotOp
from taskguard.errors import GuardDenied, LockLost
from taskguard.units import parse_duration

from .base import AsyncBackend
from .decision import Acquiring, AsyncDecision

__all__ = ["AsyncHeldLease", "AsyncLeasedPrimitive", "wait_for_lease"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class AsyncHeldLease:
    """An acquired lock or semaphore slot: how to give it back, and its fencing token.

    Attributes:
        fencing_token: For a lock, strictly greater than every token handed out before
            for it, by either API; None for a semaphore slot.
        owner: This holder's owner token.
        lost: True once a renewal found the lease gone (expired or taken over).
    """

    def __init__(
        self,
        backend: AsyncBackend,
        op: LeaseOp | SlotOp,
        fencing_token: int | None = None,
        *,
        renew: bool = True,
    ) -> None:
        self.backend = backend
        self.op = op
        self.owner = op.owner
        self.fencing_token = fencing_token
        self.lost = False
        self._handle = backend.heartbeat.add(op, self._on_lost) if renew else None

    def __repr__(self) -> str:
        token = "" if self.fencing_token is None else f" token={self.fencing_token}"
        return f"<AsyncHeldLease {self.op.key}{token}>"

    def _on_lost(self, op: object) -> None:
        self.lost = True
        self._handle = None

    def _stop_renewing(self) -> None:
        if self._handle is not None:
            self.backend.heartbeat.remove(self._handle)
            self._handle = None

    async def release(self, *, raise_on_lost: bool = True) -> bool:
        """Give it back if still ours; another owner's lease is never touched.

        Raises:
            LockLost: It expired or was taken over (unless ``raise_on_lost=False``, then
                False is returned).
        """
        self._stop_renewing()
        released = bool((await self.backend.release([self.op]))[0])
        if not released and raise_on_lost:
            raise LockLost(f"lease on {self.op.key} was no longer ours", key=self.op.key)
        return released

    async def extend(self, ttl: float | None = None, *, raise_on_lost: bool = True) -> bool:
        """Push the expiry to ``ttl`` (default: the lease's TTL) from now, if still ours."""
        op = self.op if ttl is None else dataclasses.replace(self.op, ttl=parse_duration(ttl))
        [extended] = await self.backend.renew([op])
        if not extended and raise_on_lost:
            raise LockLost(f"lease on {self.op.key} was no longer ours", key=self.op.key)
        if extended and op is not self.op:
            self.op = op
            if self._handle is not None:  # renew with the new TTL from now on
                self._stop_renewing()
                self._handle = self.backend.heartbeat.add(op, self._on_lost)
        return extended

    async def release_after(self, exc: BaseException | None) -> None:
        """Give it back at the end of an ``async with`` block (whatever it raised)."""
        await self.release()

    async def __aenter__(self) -> AsyncHeldLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


async def wait_for_lease(
    backend: AsyncBackend,
    try_acquire: Callable[[], Awaitable[AsyncDecision]],
    wakeup_key: str,
    *,
    timeout: float | None,
    retries: int | None,
    backoff: float,
) -> tuple[AsyncHeldLease | None, float]:
    """Await ``try_acquire`` until it yields a lease (``guards.leases.wait_for_lease``).

    Without ``retries`` the wait blocks on ``wakeup_key``, which a release pushes to, so
    it ends at the release (or at the holder's expiry) rather than at a polling tick.
    With ``retries`` it sleeps with exponential backoff and jitter.

    Returns:
        The lease (or None when out of time or retries) and the last ``retry_after``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = 0
    while True:
        decision = await try_acquire()
        if isinstance(decision.lease, AsyncHeldLease):
            return decision.lease, 0.0
        if retries is not None:
            if attempt >= retries:
                return None, decision.retry_after
            pause = backoff * 2**attempt
            await asyncio.sleep(pause / 2 + random.uniform(0, pause / 2))
            attempt += 1
            continue
        left = decision.retry_after if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return None, decision.retry_after
        await backend.wait_for_wakeup(wakeup_key, min(left, decision.retry_after))


class AsyncLeasedPrimitive(ABC):
    """What the asyncio lock and semaphore share: waiting, ``async with``, decorating.

    Subclasses provide :meth:`try_acquire`, the wake-up list a release pushes to, and the
    error for "not in time".
    """

    backend: AsyncBackend
    name: str

    def __init__(self) -> None:
        # What `async with primitive:` acquired, per asyncio task (nesting allowed).
        self._held: dict[asyncio.Task[Any] | None, list[AsyncHeldLease]] = {}

    @abstractmethod
    async def try_acquire(self) -> AsyncDecision:
        """Take it if free, without waiting; the decision carries the lease."""

    @property
    @abstractmethod
    def _wakeup_key(self) -> str: ...

    @abstractmethod
    def _refused(self, retry_after: float) -> GuardDenied: ...

    def acquire(
        self, timeout: float | None = None, *, retries: int | None = None, backoff: float = 0.05
    ) -> Acquiring[AsyncHeldLease]:
        """Take it, waiting for it: ``held = await x.acquire(...)``, or
        ``async with x.acquire(...) as held:``.

        Args:
            timeout: Seconds to wait (None: as long as it takes). The wait wakes when a
                holder releases, without polling; an expired holder is noticed at its TTL.
            retries: Instead of waiting for a release, try this many more times with
                exponential backoff (``backoff``, doubling, with jitter).
            backoff: The first backoff pause, in seconds.

        Raises:
            GuardDenied: Not acquired in time (LockHeld, ConcurrencyLimitReached).
        """

        async def acquire() -> AsyncHeldLease:
            held, retry_after = await wait_for_lease(
                self.backend,
                self.try_acquire,
                self._wakeup_key,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
            )
            if held is None:
                raise self._refused(retry_after)
            return held

        return Acquiring(acquire)

    async def __aenter__(self) -> AsyncHeldLease:
        held = await self.acquire()
        self._held.setdefault(asyncio.current_task(), []).append(held)
        return held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        stack = self._held[task]
        held = stack.pop()
        if not stack:
            del self._held[task]
        await held.release()

    def __call__(self, func: F) -> F:
        """Use as a decorator on an ``async`` function: each call runs holding it."""

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            async with self.acquire():
                return await func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
