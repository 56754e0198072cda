"""After a write went straight to the store: drop what Redis still holds of older writes.

A write that bypasses the queue or the cache (Redis down or out of memory, a full
write-behind queue, a write-through whose cache update failed) leaves the key's cached
copy, and in a write-behind namespace its dirty mark, naming older writes. Reads would
serve those: the write is *settled* by deleting them (``cache_wb_settle.lua``: DEL and HDEL
need no memory), unless a write newer than the direct one was queued meanwhile.

When even that fails (Redis unreachable), the key stays *unsettled* in this process:
its reads here come from the store, and every call of the cache tries the pending settles
again first, so they happen as soon as Redis answers. Another process can read the older
copy until then (docs/caching.md, "When Redis is down").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from taskguard.errors import BackendUnavailable

from . import outage
from .ops import CacheOps

__all__ = ["PendingSettles", "Settler"]


class PendingSettles:
    """The settles still pending in this process, by key: the bookkeeping that
    :class:`Settler` and ``taskguard.aio``'s write-behind cache share (thread-safe)."""

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}  # key -> version of its direct store write
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        """True while some settle is pending (a dict lookup: cheap on the read path)."""
        return bool(self._pending)

    def add(self, writes: Sequence[tuple[str, int]]) -> None:
        """Keep ``(key, version)`` settles that failed, the newest version per key."""
        with self._lock:
            for key, version in writes:
                self._pending[key] = max(version, self._pending.get(key, version))

    def items(self) -> list[tuple[str, int]]:
        """The pending ``(key, version)`` settles."""
        with self._lock:
            return list(self._pending.items())

    def done(self, writes: Sequence[tuple[str, int]]) -> None:
        """``writes`` (from :meth:`items`) were settled: drop those not re-added since."""
        with self._lock:
            for key, version in writes:
                if self._pending.get(key) == version:
                    del self._pending[key]

    def unsettled(self, keys: Iterable[str]) -> frozenset[str]:
        """Those of ``keys`` whose settle is still pending (read them from the store)."""
        with self._lock:
            return frozenset(key for key in keys if key in self._pending)

    def forget(self, keys: Iterable[str]) -> None:
        """``keys`` were written through Redis since: what it holds is new."""
        if self._pending:
            with self._lock:
                for key in keys:
                    self._pending.pop(key, None)


class Settler:
    """The settles of one cache namespace, and those still pending in this process.

    Args:
        ops: The namespace's Redis calls.
    """

    def __init__(self, ops: CacheOps) -> None:
        self.ops = ops
        self._pending = PendingSettles()

    def __bool__(self) -> bool:
        """True while some settle is pending (a dict lookup: cheap on the read path)."""
        return bool(self._pending)

    def settle(self, writes: Sequence[tuple[str, int]]) -> None:
        """Settle ``(key, version)`` direct writes now, or keep them pending."""
        if not writes:
            return
        try:
            self.ops.settle_many(writes)
        except BackendUnavailable as exc:
            self._pending.add(writes)
            outage.warn(
                "cache %s: %d key(s) written to the store, but Redis still holds older "
                "copies (%s); reads here go to the store until they are dropped",
                self.ops.namespace,
                len(writes),
                exc,
            )

    def retry(self) -> None:
        """Try the pending settles again (quietly: Redis may still be down)."""
        writes = self._pending.items()
        if not writes:
            return
        try:
            self.ops.settle_many(writes)
        except BackendUnavailable:
            return
        self._pending.done(writes)

    def unsettled(self, keys: Iterable[str]) -> frozenset[str]:
        """Those of ``keys`` whose settle is still pending (read them from the store)."""
        return self._pending.unsettled(keys)

    def forget(self, keys: Iterable[str]) -> None:
        """``keys`` were written through Redis since: what it holds is new."""
        self._pending.forget(keys)
