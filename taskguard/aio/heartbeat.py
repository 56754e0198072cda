"""One asyncio task per backend renews every lease held on it, in one call per round.

The asyncio twin of :mod:`taskguard.heartbeat`: the same rounds (a third of the shortest
TTL held, at least 50 ms), the same single ``renew`` call for every lease, the same report
of a lease found lost. It runs as a task of the event loop that took the leases, started
by the first lease and ending when the last one is released, so an idle service has no
task pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from taskguard.backend.ops import Held
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.heartbeat import MIN_INTERVAL

__all__ = ["AsyncHeartbeat"]

logger = logging.getLogger("taskguard.heartbeat")


class Renewer(Protocol):
    """What the heartbeat renews leases on (an :class:`~taskguard.aio.AsyncBackend`)."""

    async def renew(self, ops: Sequence[Held]) -> list[bool]: ...


@dataclass
class _Entry:
    lease: Held
    on_lost: Callable[[Held], None] | None


class AsyncHeartbeat:
    """Renews registered leases from an asyncio task (see the module docstring).

    Args:
        backend: Where the leases live.
    """

    def __init__(self, backend: Renewer) -> None:
        self.backend = backend
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._waiting = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, lease: Held, on_lost: Callable[[Held], None] | None = None) -> int:
        """Start renewing ``lease`` (call from the event loop); a handle for :meth:`remove`."""
        handle = next(self._ids)
        self._entries[handle] = _Entry(lease, on_lost)
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run(self._wake), name="taskguard-heartbeat"
            )
        elif lease.ttl / 3 < self._waiting and self._wake is not None:
            # Only a lease due before the next round wakes the task (see heartbeat.py).
            self._wake.set()
        return handle

    def remove(self, handle: int) -> None:
        """Stop renewing the lease behind ``handle`` (unknown handles are ignored)."""
        self._entries.pop(handle, None)
        if not self._entries and self._wake is not None:
            self._wake.set()  # nothing left: the task ends now rather than after a round

    def interval(self) -> float:
        """Seconds until the next round: a third of the shortest TTL held."""
        ttls = [entry.lease.ttl for entry in self._entries.values()]
        return max(min(ttls, default=1.0) / 3, MIN_INTERVAL)

    async def beat(self) -> list[Held]:
        """Renew every lease now, in one call; return (and report) the ones found lost.

        Raises:
            BackendUnavailable: The backend did not answer; the leases stay registered.
        """
        handles = list(self._entries)
        entries = [self._entries[h] for h in handles]
        if not entries:
            return []
        results = await self.backend.renew([entry.lease for entry in entries])
        lost = []
        for handle, entry, renewed in zip(handles, entries, results, strict=True):
            # Released while we renewed: gone because its holder gave it back.
            if renewed or handle not in self._entries:
                continue
            lost.append(entry.lease)
            self.remove(handle)
            logger.warning("lease on %s lost: it expired or was taken over", entry.lease.key)
            if entry.on_lost is not None:
                try:
                    entry.on_lost(entry.lease)
                except Exception:
                    logger.exception("lease-lost callback failed for %s", entry.lease.key)
        return lost

    async def _run(self, wake: asyncio.Event) -> None:
        while self._entries:
            self._waiting = self.interval()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self._waiting)
            wake.clear()
            if not self._entries:
                break
            try:
                await self.beat()
            except BackendUnavailable as exc:
                logger.warning("lease renewal failed: %s", exc)
            except BackendError as exc:
                logger.error("lease renewal failed, leases expire by TTL: %s", exc)
            except Exception:  # pragma: no cover - a bug must not end the renewals
                logger.exception("lease renewal crashed")

    async def stop(self) -> None:
        """End the task now (the leases stay registered; the next :meth:`add` restarts it)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if task.get_loop() is not asyncio.get_running_loop():
            task.cancel()  # another loop's task: it cannot be awaited from here
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
