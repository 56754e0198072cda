"""Write-behind writes: queue in Redis, apply backpressure, fall back to the store.

A write is ONE script call (``cache_wb_write.lua``): the cached copy, the stream entry the
drain pool will write to the store, and the dirty mark that makes reads prefer the queued
write over the store's older row. When the partition's queue is full the namespace's
``on_full`` policy decides; when Redis is down or refuses the write (OOM) the write goes
straight to the store. A write is never dropped silently: it is queued, in the store, or
the caller gets an error. After a write went to the store, the key's older cached copy
and dirty mark are dropped (:mod:`taskguard.cache.settling`), so no read serves them.
With the ``replicas`` setting, a queued write fewer replicas acknowledged goes to the
store too, as during an outage (:mod:`taskguard.cache.replication`).
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
from .records import version_above
from .replication import warn_unreplicated
from .settling import Settler

__all__ = [
    "WriteBehind",
    "announce_full",
    "bypass_records",
    "full_error",
    "store_record",
    "warn_bypass",
]

_HEADER = header()
_FIRST_BACKOFF = 0.005
_MAX_BACKOFF = 0.1

#: Seconds between two registrations of a namespace by one writer: the registry may be
#: lost meanwhile (FLUSHDB, a restart without persistence), and is a fast index of work
#: for the drain and the record of the partition count every writer must agree on.
REGISTER_EVERY = 30.0


class WriteBehind:
    """The write side of a write-behind namespace.

    Args:
        config: The namespace's settings.
        ops: Its Redis calls.
        store: Its store (the direct-write fallback).
        settler: Drops what Redis holds of older writes after a direct write.
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
        settler: Settler,
        ttl_ms: Callable[[], int],
        *,
        sender: object,
        sleep: Callable[[float], None] = _time.sleep,
        clock: Callable[[], float] = _time.monotonic,
    ) -> None:
        self.config = config
        self.ops = ops
        self.store = store
        self.settler = settler
        self.ttl_ms = ttl_ms
        self.sender = sender
        self.sleep = sleep
        self.clock = clock
        self._registered_at = -float("inf")

    def register(self) -> None:
        """Record the namespace and its partition count, and check it (raises on a
        mismatch): at the first write, then again every :data:`REGISTER_EVERY` seconds.
        """
        now = self.clock()
        if now - self._registered_at >= REGISTER_EVERY:
            check_registration(self.ops.register(), self.config.partitions, self.config.namespace)
            self._registered_at = now

    def write(self, key: str, value: Any, payload: bytes | None) -> None:
        """Queue a set of ``key`` to ``value``, encoded as ``payload`` (None: a delete);
        see the module docstring."""
        self.write_many([(key, value, payload)])

    def write_many(self, items: Sequence[tuple[str, Any, bytes | None]]) -> None:
        """Queue ``(key, value, payload)`` writes (payload None: a delete), pipelined. Not
        atomic as a whole."""
        try:
            self.register()
            replies, replicated = self._queue([(key, payload) for key, _, payload in items])
        except BackendUnavailable as exc:
            # Some may have been queued before the failure: the direct writes rank above
            # them (see _bypass), and their dirty marks and copies go.
            self._bypass([(k, v, p is None) for k, v, p in items], exc)
            return
        if replicated:
            self.settler.forget(
                key for (key, _, _), r in zip(items, replies, strict=True) if r.queued
            )
        else:
            self._unreplicated(items, replies)
        for (key, value, payload), reply in zip(items, replies, strict=True):
            if not reply.queued:
                self._on_full(key, value, payload, reply)

    def _queue(self, items: Sequence[tuple[str, bytes | None]]) -> tuple[list[WriteReply], bool]:
        """Queue ``(key, payload)`` writes; also True when as many replicas as the
        ``replicas`` setting asks acknowledged them (always, when it is 0)."""
        config = self.config
        encoded = [(key, payload, self.ttl_ms()) for key, payload in items]
        if config.replicas:
            replies, acked = self.ops.queue_writes_replicated(
                encoded,
                header=_HEADER,
                capacity=config.capacity,
                replicas=config.replicas,
                timeout_ms=config.replica_timeout_ms,
            )
            if acked < config.replicas:
                warn_unreplicated(config, sum(r.queued for r in replies), acked)
                return replies, False
            return replies, True
        if len(encoded) == 1:
            key, payload, ttl_ms = encoded[0]
            reply = self.ops.queue_write(
                key, payload, ttl_ms=ttl_ms, header=_HEADER, capacity=config.capacity
            )
            return [reply], True
        return self.ops.queue_writes(encoded, header=_HEADER, capacity=config.capacity), True

    def _unreplicated(
        self, items: Sequence[tuple[str, Any, bytes | None]], replies: Sequence[WriteReply]
    ) -> None:
        """The queued ones of ``items`` too few replicas acknowledged: a failover may lose
        them, so they go straight to the store as well, above their queued entries, and
        are settled (the drain's later write of the entry loses to the direct one)."""
        records = [
            store_record(key, value, payload is None, version_above(reply.stream_id))
            for (key, value, payload), reply in zip(items, replies, strict=True)
            if reply.queued
        ]
        if records:
            self.store.write(self.config.namespace, records)
            self.settler.settle([(record.key, record.version) for record in records])

    def _on_full(self, key: str, value: Any, payload: bytes | None, reply: WriteReply) -> None:
        policy = announce_full(self.sender, self.config, key, reply)
        if policy == "block":
            reply = self._wait_for_room(key, value, payload, reply)
            if reply.queued:
                return
        if policy in ("raise", "block"):
            raise full_error(self.config, key, reply)
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
                [reply], replicated = self._queue([(key, payload)])
            except BackendUnavailable as exc:
                self._bypass([(key, value, payload is None)], exc)
                return WriteReply(True)
            if reply.queued:
                if replicated:
                    self.settler.forget([key])
                else:
                    self._unreplicated([(key, value, payload)], [reply])
                return reply
        return reply

    def _write_through(self, key: str, value: Any, deleted: bool, dirty_id: str) -> None:
        # The store gets the write directly, with a version above the key's queued write
        # (so the drain's later write of that older entry loses). Then the cached copy and
        # the dirty mark go, unless a newer write was queued meanwhile: reads fall through
        # to the store, which holds this write. The cache never shows a value older than it.
        version = version_above(dirty_id)
        self.store.write(self.config.namespace, [store_record(key, value, deleted, version)])
        self.settler.settle([(key, version)])

    def _bypass(self, items: Sequence[tuple[str, Any, bool]], exc: BackendUnavailable) -> None:
        """Write ``(key, value, deleted)`` items straight to the store, then settle them.

        While Redis still answers reads (it refused the write with OOM), each version is
        taken above the key's queued write, whatever the clocks say; when it is down, from
        the local clock alone.
        """
        warn_bypass(self.config.namespace, exc, len(items))
        try:
            queued = self.ops.queued_ids([key for key, _, _ in items])
        except BackendUnavailable:
            queued = [""] * len(items)
        records = bypass_records(items, queued)
        self.store.write(self.config.namespace, records)
        self.settler.settle([(record.key, record.version) for record in records])


def store_record(key: str, value: Any, deleted: bool, version: int) -> Record:
    """The store record of one write of ``key`` (``value`` None when ``deleted``)."""
    return Record(key, None if deleted else value, version, deleted)


def warn_bypass(namespace: str, exc: BackendUnavailable, count: int) -> None:
    """The rate-limited warning of writes going straight to the store (sync and asyncio)."""
    outage.warn(
        "cache %s: Redis unavailable (%s); writing %d record(s) straight to the store",
        namespace,
        exc,
        count,
    )


def bypass_records(items: Sequence[tuple[str, Any, bool]], queued: Sequence[str]) -> list[Record]:
    """The store records of ``(key, value, deleted)`` items written past the queue, each
    versioned above the key's queued write (``queued``: its id, "" when unknown)."""
    return [
        store_record(key, value, deleted, version_above(seen))
        for (key, value, deleted), seen in zip(items, queued, strict=True)
    ]


def announce_full(sender: object, config: CacheConfig, key: str, reply: WriteReply) -> str:
    """Send ``writebehind_backpressure`` for a write refused by a full queue; return the
    namespace's ``on_full`` policy (shared by the sync and the asyncio write-behind)."""
    policy = config.on_full
    signals.writebehind_backpressure.send(
        sender=sender, namespace=config.namespace, key=key, backlog=reply.backlog, policy=policy
    )
    return policy


def full_error(config: CacheConfig, key: str, reply: WriteReply) -> WriteBehindFull:
    """The error a write gets when the queue stays full (``on_full`` raise or block)."""
    return WriteBehindFull(
        f"write-behind queue of {config.namespace!r} is full "
        f"({reply.backlog} records in the partition of {key!r})",
        namespace=config.namespace,
        backlog=reply.backlog,
    )
