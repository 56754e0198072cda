"""One thread per process renews every lease the process holds, in one call.

Leases (locks, uniqueness claims, and later concurrency slots) carry a short TTL so that a
killed worker's leases come back within that TTL. A task that runs longer than the TTL
keeps its leases because this heartbeat extends all of them together every ``ttl / 3``
seconds, in one script call whatever their number. A renewal that finds a lease gone
(it expired during a stall, or another owner took it) reports it through ``on_lost``.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from taskguard.backend.base import Backend
from taskguard.backend.ops import Held
from taskguard.errors import BackendError, BackendUnavailable

__all__ = ["Heartbeat", "heartbeat_for"]

logger = logging.getLogger("taskguard.heartbeat")

#: Shortest pause between two renewal rounds, whatever the TTLs.
MIN_INTERVAL = 0.05


@dataclass
class _Entry:
    lease: Held
    on_lost: Callable[[Held], None] | None


class Heartbeat:
    """Renews registered leases from a daemon thread started on first use.

    Args:
        backend: Where the leases live.

    Example:
        >>> import taskguard
        >>> from taskguard.backend.ops import LeaseOp
        >>> backend = taskguard.connect("memory://").backend
        >>> lease = LeaseOp("k", owner="me", ttl=10.0)
        >>> backend.admit([lease]).allowed
        True
        >>> heartbeat = heartbeat_for(backend)
        >>> handle = heartbeat.add(lease)
        >>> heartbeat.beat()  # one renewal round; returns the leases found lost
        []
        >>> heartbeat.remove(handle)
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiting = 0.0  # the pause the thread is in, in seconds

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, lease: Held, on_lost: Callable[[Held], None] | None = None) -> int:
        """Start renewing ``lease``; returns a handle for :meth:`remove`."""
        with self._lock:
            handle = next(self._ids)
            self._entries[handle] = _Entry(lease, on_lost)
            if self._thread is None or not self._thread.is_alive() or self._stopping.is_set():
                self._start()
            elif lease.ttl / 3 < self._waiting:
                # Only a lease that must be renewed before the next round wakes the thread
                # (waking it for every lease would renew what was just taken).
                self._wake.set()
        return handle

    def remove(self, handle: int) -> None:
        """Stop renewing the lease behind ``handle`` (unknown handles are ignored)."""
        with self._lock:
            self._entries.pop(handle, None)

    def leases(self) -> list[Held]:
        """The leases being renewed now (a snapshot; ``celery inspect taskguard_status``)."""
        with self._lock:
            return [entry.lease for entry in self._entries.values()]

    def interval(self) -> float:
        """Seconds until the next round: a third of the shortest TTL held."""
        with self._lock:
            ttls = [entry.lease.ttl for entry in self._entries.values()]
        return max(min(ttls, default=1.0) / 3, MIN_INTERVAL)

    def beat(self) -> list[Held]:
        """Renew every lease now, in one call; return (and report) the ones found lost.

        Raises:
            BackendUnavailable: The backend did not answer; the leases stay registered.
        """
        with self._lock:
            handles = list(self._entries)
            entries = [self._entries[h] for h in handles]
        if not entries:
            return []
        results = self.backend.renew([entry.lease for entry in entries])
        lost = []
        for handle, entry, renewed in zip(handles, entries, results, strict=True):
            with self._lock:
                # Released while we renewed: gone because its holder gave it back.
                still_held = handle in self._entries
            if renewed or not still_held:
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

    def _start(self) -> None:
        # A stopping thread may still be alive: it exits on its own; start a fresh one.
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskguard-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._waiting = self.interval()
            self._wake.wait(self._waiting)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.beat()
            except BackendUnavailable as exc:
                # The leases may expire if this lasts a TTL; the next round tries again.
                logger.warning("lease renewal failed: %s", exc)
            except BackendError as exc:
                # Not an outage (a permission or script error): the leases will expire
                # unless someone fixes it; the next round tries again.
                logger.error("lease renewal failed, leases expire by TTL: %s", exc)
            except Exception:  # pragma: no cover - a bug must not kill the heartbeat
                logger.exception("lease renewal crashed")

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread (leases stay registered); idempotent."""
        self._stopping.set()
        self._wake.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


_HEARTBEATS: weakref.WeakKeyDictionary[Backend, tuple[int, Heartbeat]] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()
#: This process's id, kept current across forks (read per lease; os.getpid() is a syscall).
_pid = os.getpid()


def _forked() -> None:
    global _pid  # noqa: PLW0603 - one int, read per lease without a system call
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def heartbeat_for(backend: Backend) -> Heartbeat:
    """This process's heartbeat for leases held on ``backend`` (its thread starts on first use).

    A forked child gets a heartbeat of its own: it inherits the parent's registry but not
    its thread, and the parent's leases are not the child's to renew.
    """
    pid = _pid
    with _REGISTRY_LOCK:
        entry = _HEARTBEATS.get(backend)
        if entry is None or entry[0] != pid:
            entry = _HEARTBEATS[backend] = (pid, Heartbeat(backend))
        return entry[1]
