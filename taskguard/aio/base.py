"""The asyncio backend contract, and its process-local implementation.

:class:`AsyncBackend` mirrors :class:`taskguard.backend.Backend` method for method, as
coroutines. :class:`~taskguard.aio.redis.AsyncRedisBackend` serves a fleet;
:class:`AsyncMemoryBackend` wraps a :class:`~taskguard.backend.MemoryBackend` (unit tests,
local development), which a sync client may share.
"""

from __future__ import annotations

import asyncio
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

from taskguard.backend.memory import MemoryBackend
from taskguard.backend.ops import Admission, BreakerOp, Held, Op
from taskguard.clock import Clock, FakeClock
from taskguard.keys import KeySchema

from .heartbeat import AsyncHeartbeat

__all__ = ["AsyncBackend", "AsyncMemoryBackend"]


class AsyncBackend(ABC):
    """Runs guard ops atomically, awaiting the server: the asyncio twin of ``Backend``.

    Args:
        keys: The key schema (prefix and hash tag) every key is built with.

    Attributes:
        heartbeat: Renews the leases held on this backend, from one asyncio task.
    """

    def __init__(self, *, keys: KeySchema | None = None) -> None:
        self.keys = keys or KeySchema()
        self.heartbeat = AsyncHeartbeat(self)

    @abstractmethod
    async def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        """Check every op and commit all or none, in one round trip (``Backend.admit``)."""

    @abstractmethod
    async def release(self, ops: Sequence[Held]) -> list[int]:
        """Release what we own and record breaker outcomes (``Backend.release``)."""

    @abstractmethod
    async def renew(self, ops: Sequence[Held]) -> list[bool]:
        """Extend leases we own by their TTL; False for each one lost."""

    @abstractmethod
    async def owner(self, key: str) -> str | None:
        """The current owner of lease ``key``, or None."""

    @abstractmethod
    async def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        """Wait until a release pushes to wake-up list ``key`` (True) or ``timeout`` ends."""

    @abstractmethod
    async def breaker_state(self, op: BreakerOp) -> str:
        """The effective state of ``op``'s breaker."""

    @abstractmethod
    async def set_breaker(self, op: BreakerOp, action: str) -> None:
        """Apply ``force_open``, ``disable``, ``force_close`` or ``reset`` to a breaker."""

    @property
    @abstractmethod
    def offline(self) -> MemoryBackend:
        """The process-local backend the ``local`` outage policy enforces guards in."""

    def now(self) -> float:
        """The clock epoch times are turned into waits with (this host's, or a fake one)."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a reservation's wait)."""
        await asyncio.sleep(max(seconds, 0.0))

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Check that the backend answers; raise :class:`BackendUnavailable` if not."""

    async def aclose(self) -> None:
        """Stop renewing leases and release connections."""
        await self.heartbeat.stop()


class AsyncMemoryBackend(AsyncBackend):
    """A :class:`MemoryBackend` behind the asyncio contract.

    Its calls never wait on I/O, so they run in the event loop directly; only a wait for
    a wake-up blocks, and it runs in a worker thread. With a
    :class:`~taskguard.clock.FakeClock`, a reservation's wait advances the clock.

    Args:
        memory: The memory backend to share (a sync client on it sees the same state).
        keys: The key schema, when ``memory`` is not given.
        clock: The clock, when ``memory`` is not given.
    """

    def __init__(
        self,
        memory: MemoryBackend | None = None,
        *,
        keys: KeySchema | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.memory = memory or MemoryBackend(keys=keys, clock=clock)
        super().__init__(keys=self.memory.keys)

    def __repr__(self) -> str:
        return f"AsyncMemoryBackend(prefix={self.keys.prefix!r})"

    async def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        return self.memory.admit(ops, reserve_within=reserve_within)

    async def release(self, ops: Sequence[Held]) -> list[int]:
        return self.memory.release(ops)

    async def renew(self, ops: Sequence[Held]) -> list[bool]:
        return self.memory.renew(ops)

    async def owner(self, key: str) -> str | None:
        return self.memory.owner(key)

    async def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        wait = functools.partial(self.memory.wait_for_wakeup, key, timeout)
        return await asyncio.get_running_loop().run_in_executor(None, wait)

    async def breaker_state(self, op: BreakerOp) -> str:
        return self.memory.breaker_state(op)

    async def set_breaker(self, op: BreakerOp, action: str) -> None:
        self.memory.set_breaker(op, action)

    @property
    def offline(self) -> MemoryBackend:
        return self.memory

    def now(self) -> float:
        return self.memory.clock.time()

    async def sleep(self, seconds: float) -> None:
        clock = self.memory.clock
        if isinstance(clock, FakeClock):
            clock.sleep(seconds)
        else:
            await super().sleep(seconds)
