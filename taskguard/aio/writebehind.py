"""Write-behind writes for asyncio: :mod:`taskguard.cache.writebehind`, awaited.

The same keys, script (``cache_wb_write.lua``), arguments and replies as the sync writer,
all from :class:`~taskguard.cache.calls.CacheCalls`, so a write queued here is drained
by the same drain pool as one queued by a Celery task, and read back by either API. The
policies are the sync ones: a full partition follows ``on_full`` (``write_through``,
``raise``, ``block``), and while Redis is down (or refuses writes) the write goes straight
to the store, after which the key is *settled* (its older copy and dirty mark dropped,
``cache_wb_settle.lua``) or read from the store by this process until it is. With the
``replicas`` setting, a queued write fewer replicas acknowledged (``WAIT``, pipelined after
the script) goes to the store too. A write is never dropped silently.

Stores are sync (database drivers): their calls run in a worker thread
(``asyncio.to_thread``), so the event loop never blocks on the database.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from taskguard.backend.lua import Script
from taskguard.backend.wire import batch_replies, named_script, not_loaded
from taskguard.cache import outage
from taskguard.cache.calls import CacheCalls, WriteReply, text
from taskguard.cache.config import CacheConfig
from taskguard.cache.entry import header
from taskguard.cache.ops import check_registration
from taskguard.cache.records import version_above
from taskguard.cache.replication import acked_count, warn_unreplicated
from taskguard.cache.settling import PendingSettles
from taskguard.cache.writebehind import (
    REGISTER_EVERY,
    announce_full,
    bypass_records,
    full_error,
    store_record,
    warn_bypass,
)
from taskguard.errors import BackendUnavailable
from taskguard.sinks.base import Record, Store

from .redis import AsyncRedisBackend

__all__ = ["AsyncSettler", "AsyncWriteBehind"]

_HEADER = header()
_FIRST_BACKOFF = 0.005
_MAX_BACKOFF = 0.1


class AsyncSettler:
    """The settles of one namespace (see :class:`taskguard.cache.settling.Settler`)."""

    def __init__(self, backend: AsyncRedisBackend, calls: CacheCalls) -> None:
        self.backend = backend
        self.calls = calls
        self.pending = PendingSettles()

    async def _settle_many(self, writes: Sequence[tuple[str, int]]) -> None:
        calls = [self.calls.settle_call(key, version) for key, version in writes]
        await self.backend.run_script_many("cache_wb_settle", calls, what="cache settle")

    async def settle(self, writes: Sequence[tuple[str, int]]) -> None:
        """Settle ``(key, version)`` direct writes now, or keep them pending."""
        if not writes:
            return
        try:
            await self._settle_many(writes)
        except BackendUnavailable as exc:
            self.pending.add(writes)
            outage.warn(
                "cache %s: %d key(s) written to the store, but Redis still holds older "
                "copies (%s); reads here go to the store until they are dropped",
                self.calls.namespace,
                len(writes),
                exc,
            )

    async def unsettled(self, keys: Iterable[str]) -> frozenset[str]:
        """Retry the pending settles (quietly), then: those of ``keys`` still pending."""
        if not self.pending:
            return frozenset()
        writes = self.pending.items()
        try:
            await self._settle_many(writes)
        except BackendUnavailable:
            pass
        else:
            self.pending.done(writes)
        return self.pending.unsettled(keys)


class AsyncWriteBehind:
    """The write side of a write-behind namespace, awaited.

    Args:
        config: The namespace's settings.
        settler: Drops what Redis holds of older writes after a direct write; its
            backend and calls (``queued=True``) are the writer's.
        store: Its store (the direct-write fallback), called in a worker thread.
        ttl_ms: Draws a jittered TTL, in milliseconds, for each cached copy.
        sender: The ``sender`` of backpressure signals (the cache).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        config: CacheConfig,
        settler: AsyncSettler,
        store: Store,
        ttl_ms: Callable[[], int],
        *,
        sender: object,
        clock: Callable[[], float] = _time.monotonic,
    ) -> None:
        self.config = config
        self.backend = settler.backend
        self.calls = settler.calls
        self.store = store
        self.settler = settler
        self.ttl_ms = ttl_ms
        self.sender = sender
        self.clock = clock
        self._registered_at = -float("inf")

    async def register(self) -> None:
        """Record the namespace and its partition count, and check it (raises on a
        mismatch): at the first write, then every ``REGISTER_EVERY`` seconds."""
        now = self.clock()
        if now - self._registered_at < REGISTER_EVERY:
            return
        where = self.backend.keys.write_behind_namespaces()
        async with self.backend.commands("write-behind registration") as client:
            pipe = client.pipeline(transaction=False)
            pipe.hsetnx(where, self.config.namespace, self.config.partitions)
            pipe.hget(where, self.config.namespace)
            _, recorded = await pipe.execute()
        check_registration(int(recorded), self.config.partitions, self.config.namespace)
        self._registered_at = now

    async def write_many(self, items: Sequence[tuple[str, Any, bytes | None]]) -> None:
        """Queue ``(key, value, payload)`` writes (payload None: a delete), pipelined. Not
        atomic as a whole."""
        try:
            await self.register()
            replies, replicated = await self._queue([(key, payload) for key, _, payload in items])
        except BackendUnavailable as exc:
            await self._bypass([(k, v, p is None) for k, v, p in items], exc)
            return
        if replicated:
            self.settler.pending.forget(
                k for (k, _, _), r in zip(items, replies, strict=True) if r.queued
            )
        else:
            await self._unreplicated(items, replies)
        for (key, value, payload), reply in zip(items, replies, strict=True):
            if not reply.queued:
                await self._on_full(key, value, payload, reply)

    async def _queue(
        self, items: Sequence[tuple[str, bytes | None]]
    ) -> tuple[list[WriteReply], bool]:
        """Queue ``(key, payload)`` writes; also True when as many replicas as the
        ``replicas`` setting asks acknowledged them (always, when it is 0)."""
        calls = [
            (
                self.calls.queue_keys(key),
                self.calls.queue_args(key, payload, self.ttl_ms(), _HEADER, self.config.capacity),
            )
            for key, payload in items
        ]
        if self.config.replicas:
            replies, acked = await self._send_then_wait(calls)
            if acked < self.config.replicas:
                warn_unreplicated(self.config, sum(r.queued for r in replies), acked)
                return replies, False
            return replies, True
        if len(calls) == 1:
            keys, args = calls[0]
            reply = await self.backend.run_script(
                "cache_wb_write", keys, args, what="write-behind write"
            )
            return [self.calls.write_reply(reply)], True
        raw = await self.backend.run_script_many("cache_wb_write", calls, what="write-behind")
        return [self.calls.write_reply(reply) for reply in raw], True

    async def _send_then_wait(
        self, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> tuple[list[WriteReply], int]:
        """The write scripts, then ``WAIT``, in one round trip on one connection (as
        ``CacheOps.queue_writes_replicated``): the replies and the replicas' count."""
        script = named_script("cache_wb_write", ())
        async with self.backend.commands("write-behind write") as client:
            replies, acked = await _pipeline_then_wait(client, script, calls, self.config)
            if missing := not_loaded(replies):
                await client.script_load(script.source)
                again, acked_again = await _pipeline_then_wait(
                    client, script, [calls[i] for i in missing], self.config
                )
                acked = min(acked, acked_again)  # the retry may use another connection
                replies = batch_replies(replies, missing, again)
            else:
                replies = batch_replies(replies, (), ())
        return [self.calls.write_reply(reply) for reply in replies], acked

    async def _unreplicated(
        self, items: Sequence[tuple[str, Any, bytes | None]], replies: Sequence[WriteReply]
    ) -> None:
        """The queued ones of ``items`` too few replicas acknowledged go straight to the
        store too, above their queued entries, then are settled (as the sync writer)."""
        records = [
            store_record(key, value, payload is None, version_above(reply.stream_id))
            for (key, value, payload), reply in zip(items, replies, strict=True)
            if reply.queued
        ]
        if records:
            await self._store_write(records)
            await self.settler.settle([(record.key, record.version) for record in records])

    async def _on_full(
        self, key: str, value: Any, payload: bytes | None, reply: WriteReply
    ) -> None:
        policy = announce_full(self.sender, self.config, key, reply)
        if policy == "block":
            reply = await self._wait_for_room(key, value, payload, reply)
            if reply.queued:
                return
        if policy in ("raise", "block"):
            raise full_error(self.config, key, reply)
        # write_through: the store, above the key's queued write; then settle.
        version = version_above(reply.dirty_id)
        await self._store_write([store_record(key, value, payload is None, version)])
        await self.settler.settle([(key, version)])

    async def _wait_for_room(
        self, key: str, value: Any, payload: bytes | None, reply: WriteReply
    ) -> WriteReply:
        deadline = self.clock() + self.config.block_timeout
        delay = _FIRST_BACKOFF
        while (left := deadline - self.clock()) > 0:
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_BACKOFF)
            try:
                [reply], replicated = await self._queue([(key, payload)])
            except BackendUnavailable as exc:
                await self._bypass([(key, value, payload is None)], exc)
                return WriteReply(True)
            if reply.queued:
                if replicated:
                    self.settler.pending.forget([key])
                else:
                    await self._unreplicated([(key, value, payload)], [reply])
                return reply
        return reply

    async def _bypass(
        self, items: Sequence[tuple[str, Any, bool]], exc: BackendUnavailable
    ) -> None:
        """Write ``(key, value, deleted)`` straight to the store, then settle them (as
        ``WriteBehind._bypass``: versions above the queued writes while Redis reads)."""
        warn_bypass(self.config.namespace, exc, len(items))
        try:
            queued = await self._queued_ids([key for key, _, _ in items])
        except BackendUnavailable:
            queued = [""] * len(items)
        records = bypass_records(items, queued)
        await self._store_write(records)
        await self.settler.settle([(record.key, record.version) for record in records])

    async def _queued_ids(self, keys: Sequence[str]) -> list[str]:
        async with self.backend.commands("write-behind dirty lookup") as client:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(self.calls.dirty_key(key), key)
            return [text(found) for found in await pipe.execute()]

    async def _store_write(self, records: list[Record]) -> None:
        await asyncio.to_thread(self.store.write, self.config.namespace, records)


async def _pipeline_then_wait(
    client: Any,
    script: Script,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
    config: CacheConfig,
) -> tuple[list[Any], int]:
    """``taskguard.cache.replication.send_then_wait`` on an asyncio client."""
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    pipe.wait(config.replicas, config.replica_timeout_ms)
    *replies, acked = await pipe.execute(raise_on_error=False)
    return replies, acked_count(acked)
