"""What the standalone lock and semaphore share: a held lease, and waiting for one."""

from __future__ import annotations

import dataclasses
import functools
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from taskguard.backend.ops import Admission, LeaseOp, Op, SlotOp
from taskguard.errors import GuardDenied, LockLost
from taskguard.heartbeat import heartbeat_for
from taskguard.units import parse_duration

from .base import Decision

if TYPE_CHECKING:
    from taskguard.backend.base import Backend

__all__ = ["HeldLease", "LeasedPrimitive", "wait_for_lease"]

F = TypeVar("F", bound=Callable[..., Any])


class HeldLease:
    """An acquired lock or concurrency slot: how to give it back, and its fencing token.

    Attributes:
        fencing_token: For a lock, strictly greater than every token handed out before
            for it; None for a concurrency slot.
        owner: This holder's owner token.
    """

    def __init__(
        self,
        backend: Backend,
        op: LeaseOp | SlotOp,
        fencing_token: int | None = None,
        *,
        renew: bool = True,
    ) -> None:
        self.backend = backend
        self.op = op
        self.owner = op.owner
        self.fencing_token = fencing_token
        self._heartbeat = heartbeat_for(backend) if renew else None
        self._handle: int | None = self._heartbeat.add(op) if self._heartbeat is not None else None

    def __repr__(self) -> str:
        token = "" if self.fencing_token is None else f" token={self.fencing_token}"
        return f"<HeldLease {self.op.key}{token}>"

    def release(self, *, raise_on_lost: bool = True) -> bool:
        """Give it back if still ours; another owner's lease is never touched.

        Raises:
            LockLost: It expired or was taken over (unless ``raise_on_lost=False``, then
                False is returned).
        """
        if self._handle is not None and self._heartbeat is not None:
            self._heartbeat.remove(self._handle)
            self._handle = None
        released = bool(self.backend.release([self.op])[0])
        if not released and raise_on_lost:
            raise LockLost(f"lease on {self.op.key} was no longer ours", key=self.op.key)
        return released

    def extend(self, ttl: float | None = None, *, raise_on_lost: bool = True) -> bool:
        """Push the expiry to ``ttl`` (default: the lease's TTL) from now, if still ours."""
        op = self.op if ttl is None else dataclasses.replace(self.op, ttl=parse_duration(ttl))
        [extended] = self.backend.renew([op])
        if not extended and raise_on_lost:
            raise LockLost(f"lease on {self.op.key} was no longer ours", key=self.op.key)
        if extended and op is not self.op:
            self.op = op
            if self._handle is not None:  # renew with the new TTL from now on
                heartbeat_for(self.backend).remove(self._handle)
                self._handle = heartbeat_for(self.backend).add(op)
        return extended

    def release_after(self, exc: BaseException | None) -> None:
        """Release at the end of a ``with`` block (whatever it raised)."""
        self.release()

    def __enter__(self) -> HeldLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def wait_for_lease(
    attempt: Callable[[float], Decision],
    *,
    timeout: float | None,
    retries: int | None,
    backoff: float,
) -> tuple[HeldLease | None, float]:
    """Attempt until an attempt yields a lease, waiting between attempts.

    ``attempt(0)`` tries at once; ``attempt(wait)`` first blocks on the wake-up list a
    release pushes to, for at most ``wait`` seconds, then tries (the Redis backend sends
    both in one write: see :meth:`~taskguard.backend.base.Backend.admit_after_wakeup`).
    So a wait ends at the release (or at the holder's expiry, for a crashed holder)
    rather than at a polling tick. With ``retries`` it sleeps with exponential backoff and
    jitter between plain attempts instead.

    Returns:
        The lease (or None when out of time or retries) and the last ``retry_after``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    attempts = 0
    decision = attempt(0.0)
    while decision.lease is None:
        if retries is not None:
            if attempts >= retries:
                return None, decision.retry_after
            pause = backoff * 2**attempts
            time.sleep(pause / 2 + random.uniform(0, pause / 2))
            attempts += 1
            decision = attempt(0.0)
            continue
        left = decision.retry_after if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return None, decision.retry_after
        decision = attempt(min(left, decision.retry_after))
    return cast(HeldLease, decision.lease), 0.0


class LeasedPrimitive(ABC):
    """What the standalone lock and semaphore share: waiting, ``with``, decorating.

    Subclasses provide :meth:`try_acquire`, the wake-up list a release pushes to, and the
    error for "not in time".
    """

    backend: Backend
    name: str

    def __init__(self) -> None:
        self._held = threading.local()  # what `with primitive:` acquired, per thread

    def try_acquire(self) -> Decision:
        """Take it if free, without waiting; the decision carries the lease."""
        return self._attempt(0.0)

    def _attempt(self, wait: float) -> Decision:
        ops = self._ops()
        if wait > 0:
            admission = self.backend.admit_after_wakeup(self._wakeup_key, wait, ops)
        else:
            admission = self.backend.admit(ops)
        return self._decision(ops[0], admission)

    @abstractmethod
    def _ops(self) -> list[Op]:
        """The ops of one attempt (a fresh owner each)."""

    @abstractmethod
    def _decision(self, op: Op, admission: Admission) -> Decision:
        """The decision for ``op``'s admission, with the lease when admitted."""

    @property
    @abstractmethod
    def _wakeup_key(self) -> str: ...

    @abstractmethod
    def _refused(self, retry_after: float) -> GuardDenied: ...

    def acquire(
        self, timeout: float | None = None, *, retries: int | None = None, backoff: float = 0.05
    ) -> HeldLease:
        """Take it, waiting for it.

        Args:
            timeout: Seconds to wait (None: as long as it takes). The wait wakes when a
                holder releases, without polling; an expired holder is noticed at its TTL.
            retries: Instead of waiting for a release, try this many more times with
                exponential backoff (``backoff``, doubling, with jitter).
            backoff: The first backoff pause, in seconds.

        Raises:
            GuardDenied: Not acquired in time (LockHeld, ConcurrencyLimitReached).
        """
        held, retry_after = wait_for_lease(
            self._attempt,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )
        if held is None:
            raise self._refused(retry_after)
        return held

    def __enter__(self) -> HeldLease:
        held = self.acquire()
        self._held.__dict__.setdefault("stack", []).append(held)
        return held

    def __exit__(self, *exc_info: object) -> None:
        self._held.stack.pop().release()

    def __call__(self, func: F) -> F:
        """Use as a decorator: each call runs holding it."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.acquire():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
