"""Write-behind writes: queue in Redis, apply backpressure, fall back to the store.

A write is ONE script call (``cache_wb_write.lua``): the cached copy, the stream entry the
drain pool will write to the store, and the dirty mark that makes reads prefer the queued
write over the store's older row. When the partition's queue is full the namespace's
``on_full`` policy decides; when Redis is down the write goes straight to the store. A
write is never dropped silently: it is queued, in the store, or the caller gets an error.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Sequence
from typing import Any

from taskguard import signals
from taskguard.errors import BackendUnavailable, WriteBehindFull
from taskguard.sinks.base import Record, Store

from . import outage
from .config import CacheConfig
from .entry import header
from .ops import CacheOps, WriteReply, check_registration
from .records import local_version, version_of

__all__ = ["WriteBehind"]

_HEADER = header()
_FIRST_BACKOFF = 0.005
_MAX_BACKOFF = 0.1


class WriteBehind:
    """The write side of a write-behind namespace.

    Args:
        config: The namespace's settings.
        ops: Its Redis calls.
        store: Its store (the direct-write fallback).
        ttl_ms: Draws a jittered TTL, in milliseconds, for each cached copy.
        sender: The ``sender`` of backpressure signals (the cache service).
        sleep: Sleeps while ``on_full="block"`` waits (injectable).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        config: CacheConfig,
        ops: CacheOps,
        store: Store,
        ttl_ms: Callable[[], int],
        *,
        sender: object,
        sleep: Callable[[float], None] = _time.sleep,
        clock: Callable[[], float] = _time.monotonic,
    ) -> None:
        self.config = config
        self.ops = ops
        self.store = store
        self.ttl_ms = ttl_ms
        self.sender = sender
        self.sleep = sleep
        self.clock = clock
        self.registered = False

    def register(self) -> None:
        """Record the namespace and its partition count (once; raises on a mismatch)."""
        if not self.registered:
            check_registration(self.ops.register(), self.config.partitions, self.config.namespace)
            self.registered = True

    def write(self, key: str, value: Any, payload: bytes | None) -> None:
        """Queue a set of ``key`` to ``value``, encoded as ``payload`` (None: a delete);
        see the module docstring."""
        try:
            self.register()
            reply = self._queue(key, payload)
        except BackendUnavailable as exc:
            self._direct([_record(key, value, payload is None, local_version())], exc)
            return
        if not reply.queued:
            self._on_full(key, value, payload, reply)

    def write_many(self, items: Sequence[tuple[str, Any, bytes | None]]) -> None:
        """Queue ``(key, value, payload)`` writes (payload None: a delete), pipelined. Not
        atomic as a whole."""
        encoded = [(key, payload, self.ttl_ms()) for key, _, payload in items]
        try:
            self.register()
            replies = self.ops.queue_writes(encoded, header=_HEADER, capacity=self.config.capacity)
        except BackendUnavailable as exc:
            # Some may have been queued before the failure: their stream versions are
            # older than these local ones, so the direct write still wins in the store.
            records = [_record(k, v, p is None, local_version()) for k, v, p in items]
            self._direct(records, exc)
            return
        for (key, value, payload), reply in zip(items, replies, strict=True):
            if not reply.queued:
                self._on_full(key, value, payload, reply)

    def _queue(self, key: str, payload: bytes | None) -> WriteReply:
        return self.ops.queue_write(
            key, payload, ttl_ms=self.ttl_ms(), header=_HEADER, capacity=self.config.capacity
        )

    def _on_full(self, key: str, value: Any, payload: bytes | None, reply: WriteReply) -> None:
        policy = self.config.on_full
        signals.writebehind_backpressure.send(
            sender=self.sender,
            namespace=self.config.namespace,
            key=key,
            backlog=reply.backlog,
            policy=policy,
        )
        if policy == "block":
            reply = self._wait_for_room(key, value, payload, reply)
            if reply.queued:
                return
        if policy in ("raise", "block"):
            raise WriteBehindFull(
                f"write-behind queue of {self.config.namespace!r} is full "
                f"({reply.backlog} records in the partition of {key!r})",
                namespace=self.config.namespace,
                backlog=reply.backlog,
            )
        self._write_through(key, value, payload is None, reply.dirty_id)

    def _wait_for_room(
        self, key: str, value: Any, payload: bytes | None, reply: WriteReply
    ) -> WriteReply:
        deadline = self.clock() + self.config.block_timeout
        delay = _FIRST_BACKOFF
        while (left := deadline - self.clock()) > 0:
            self.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_BACKOFF)
            try:
                reply = self._queue(key, payload)
            except BackendUnavailable as exc:
                self._direct([_record(key, value, payload is None, local_version())], exc)
                return WriteReply(True)
            if reply.queued:
                return reply
        return reply

    def _write_through(self, key: str, value: Any, deleted: bool, dirty_id: str) -> None:
        # The store gets the write directly, with a version above the key's queued write
        # (so the drain's later write of that older entry loses). Then the cached copy and
        # the dirty mark go, unless a newer write was queued meanwhile: reads fall through
        # to the store, which holds this write. The cache never shows a value older than it.
        version = local_version()
        if dirty_id:
            version = max(version, version_of(dirty_id) + 1)
        self.store.write(self.config.namespace, [_record(key, value, deleted, version)])
        try:
            self.ops.settle(key, dirty_id)
        except BackendUnavailable as exc:
            outage.warn(
                "cache %s: %r written to the store (queue full), but its cached copy could "
                "not be dropped: %s",
                self.config.namespace,
                key,
                exc,
            )

    def _direct(self, records: list[Record], exc: BackendUnavailable) -> None:
        outage.warn(
            "cache %s: Redis unavailable (%s); writing %d record(s) straight to the store",
            self.config.namespace,
            exc,
            len(records),
        )
        self.store.write(self.config.namespace, records)


def _record(key: str, value: Any, deleted: bool, version: int) -> Record:
    return Record(key, None if deleted else value, version, deleted)
