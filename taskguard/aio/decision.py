"""What the asyncio primitives share: their decision, ``acquire()``'s result, admission.

:func:`admit` is :func:`taskguard.guards.admission.admit` awaited: the same outage
policies (the same :func:`~taskguard.guards.admission.decide_offline`), the same errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from taskguard.backend.ops import Op
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.guards.admission import Outcome, decide_offline, log_outage
from taskguard.guards.base import Guard

from .base import AsyncBackend

__all__ = ["Acquiring", "AsyncDecision", "AsyncReleasable", "admit"]


class AsyncReleasable(Protocol):
    """Something held that an ``async with`` gives back."""

    async def release_after(self, exc: BaseException | None) -> None:
        """Give it back at the end of a block that raised ``exc`` (or None)."""
        ...


R = TypeVar("R", bound=AsyncReleasable)


@dataclass(frozen=True)
class AsyncDecision:
    """The answer of an asyncio ``try_acquire()``: :class:`taskguard.Decision`'s fields.

    It is truthy when allowed, and an async context manager that gives back what was
    acquired (a lock's lease, a slot, a breaker call's outcome; nothing for a rate limit).

    Attributes:
        allowed: Whether the call may proceed.
        retry_after: Seconds after which asking again can succeed (0 when allowed).
        remaining: Tokens left in the bucket after this call (-1 if not applicable).
        key: The resolved guard key.
        degraded: True when the backend was unreachable and the outage policy decided.
        token: A lock's fencing token, when one was acquired.
        lease: What to give back, when the guard holds something.
    """

    allowed: bool
    retry_after: float = 0.0
    remaining: int = -1
    key: str | None = None
    degraded: bool = False
    token: int | None = None
    lease: AsyncReleasable | None = None

    def __bool__(self) -> bool:
        return self.allowed

    async def release_after(self, exc: BaseException | None) -> None:
        """Give back what was acquired (if anything) after a block that raised ``exc``."""
        if self.lease is not None:
            await self.lease.release_after(exc)

    async def __aenter__(self) -> AsyncDecision:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release_after(exc)


class Acquiring(Generic[R]):
    """What ``acquire()`` returns: ``await`` it for what was acquired, or use it in
    ``async with``, which gives it back at the end of the block.

    Nothing happens until it is awaited or entered (no coroutine is made before), so an
    ``acquire()`` never used leaves no "never awaited" warning.

    Example:
        >>> import asyncio, taskguard.aio
        >>> lock = taskguard.aio.connect("memory://").lock("report")
        >>> async def main():
        ...     async with lock.acquire(timeout=1) as held:
        ...         return held.fencing_token > 0
        >>> asyncio.run(main())
        True
    """

    __slots__ = ("_acquire", "_held")

    def __init__(self, acquire: Callable[[], Awaitable[R]]) -> None:
        self._acquire = acquire
        self._held: R | None = None

    def __await__(self) -> Generator[Any, None, R]:
        return self._acquire().__await__()

    async def __aenter__(self) -> R:
        self._held = await self._acquire()
        return self._held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            await held.release_after(exc)


async def admit(
    backend: AsyncBackend,
    guards: Sequence[Guard],
    ops: Sequence[Op],
    *,
    reserve_within: float = 0.0,
) -> Outcome:
    """Admit ``ops`` (one per guard, same order) in one round trip, the outage policies
    deciding while the backend is unreachable (see ``taskguard.guards.admission.admit``).

    Raises:
        BackendError: Redis refused for a reason that is not an outage; it names
            ``guards``.
    """
    try:
        return Outcome(await backend.admit(ops, reserve_within=reserve_within))
    except BackendUnavailable as exc:
        log_outage(exc)
        return decide_offline(lambda: backend.offline, guards, ops, exc)
    except BackendError as exc:
        raise exc.naming(tuple(repr(guard) for guard in guards)) from exc.__cause__
