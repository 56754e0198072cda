"""The backend contract: atomic guard primitives behind a small interface.

:class:`RedisBackend` serves a fleet; :class:`MemoryBackend` serves one process (unit tests,
local development, and the ``local`` outage policy). Both pass the same contract tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from taskguard.keys import KeySchema

from .ops import Admission, BreakerOp, Held, Op

__all__ = ["Backend"]


class Backend(ABC):
    """Runs guard ops atomically: the bottom layer every primitive is built on.

    It knows nothing of the primitives above it (those are built by
    :class:`taskguard.client.Client`, which :func:`taskguard.connect` returns).

    Args:
        keys: The key schema (prefix and hash tag) every key is built with.
    """

    def __init__(self, *, keys: KeySchema | None = None) -> None:
        self.keys = keys or KeySchema()

    @abstractmethod
    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        """Check every op and commit all or none, atomically, in one round trip.

        Args:
            ops: The ops, in check order.
            reserve_within: When the ops are denied only for lack of rate-limit tokens and
                they would all pass within this many seconds, reserve that future slot
                (the tokens are taken now) and report ``reserved=True``.

        Raises:
            BackendUnavailable: The backend could not be reached.
        """

    @abstractmethod
    def release(self, ops: Sequence[Held]) -> list[int]:
        """Release leases and slots we own, and record breaker outcomes, in one round trip.

        Returns one int per op: for a lease or slot 1 if released, 0 if no longer ours
        (another owner's lease is never touched); for a breaker, the transition code
        (0 none, 1 closed>open, 2 half_open>open, 3 half_open>closed).
        """

    @abstractmethod
    def renew(self, ops: Sequence[Held]) -> list[bool]:
        """Extend leases we own by their TTL, in one round trip; False for each one lost."""

    @abstractmethod
    def owner(self, key: str) -> str | None:
        """The current owner of lease ``key``, or None."""

    @abstractmethod
    def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        """Block until a release pushes to wake-up list ``key`` (True) or ``timeout`` ends."""

    def admit_after_wakeup(
        self, key: str, timeout: float, ops: Sequence[Op], *, reserve_within: float = 0.0
    ) -> Admission:
        """A waiter's next attempt: wait as :meth:`wait_for_wakeup` does, then admit
        ``ops`` whether woken or not.

        It may return before ``timeout`` without a wake-up (the Redis backend waits one
        ``BLPOP`` slice at most); callers loop until admitted or out of time. The Redis
        backend sends the ``BLPOP`` and the admission in one write, so the admission runs
        on the server as soon as the wake-up arrives, with no round trip in between.
        """
        self.wait_for_wakeup(key, timeout)
        return self.admit(ops, reserve_within=reserve_within)

    @abstractmethod
    def breaker_state(self, op: BreakerOp) -> str:
        """The effective state of ``op``'s breaker: closed, open, half_open,
        forced_open or disabled."""

    @abstractmethod
    def set_breaker(self, op: BreakerOp, action: str) -> None:
        """Apply ``force_open``, ``disable``, ``force_close`` or ``reset`` to a breaker."""

    @abstractmethod
    def time(self) -> float:
        """The backend's clock, in seconds since the epoch (Redis ``TIME``)."""

    def ping(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Check that the backend answers; raise :class:`BackendUnavailable` if not."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def reset_after_fork(self) -> None:  # noqa: B027 - optional hook
        """Drop state inherited from a parent process (connections, breaker state)."""
