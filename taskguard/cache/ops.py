"""The Redis side of one cache namespace: its keys and its script calls.

Every call goes through the backend's error wrapping, so a Redis failure surfaces as
:class:`~taskguard.errors.BackendUnavailable` and feeds the backend's outage breaker.
Batches are pipelined: one round trip for many keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskguard import _instrument
from taskguard.backend.wire import batch_replies, named_script, not_loaded
from taskguard.errors import ConfigurationError

from .calls import MISS, CacheCalls, Lookup, WriteReply, text
from .codec import Codec
from .replication import send_then_wait

if TYPE_CHECKING:
    from taskguard.backend.redis import RedisBackend

__all__ = ["MISS", "CacheOps", "Lookup", "WriteReply", "check_registration"]


def _size(value: object) -> int:
    """Bytes of a cached copy or payload in a reply (0: none)."""
    return len(value) if isinstance(value, (bytes, str)) else 0


def _found_size(reply: list[Any]) -> int:
    """Bytes of what a ``cache_read`` reply found (0 for a miss)."""
    return _size(reply[1]) if len(reply) > 1 else 0


class CacheOps:
    """Keys and script calls of namespace ``namespace`` on a Redis backend.

    Args:
        backend: The Redis backend.
        namespace: The cache namespace.
        partitions: Partition count: a key's keys carry its partition's hash tag.
        codec: The codec of cached copies.
        queued: True for write-behind: reads consult the queue, fills the dirty index.
    """

    def __init__(
        self, backend: RedisBackend, namespace: str, partitions: int, codec: Codec, *, queued: bool
    ) -> None:
        self.backend = backend
        self.namespace = namespace
        self.partitions = partitions
        self.codec = codec
        self.queued = queued
        self.calls = CacheCalls(backend.keys, namespace, partitions, codec, queued=queued)

    # ------------------------------------------------------------------ keys

    def value_key(self, key: str) -> str:
        """The key holding ``key``'s cached copy."""
        return self.calls.value_key(key)

    # ------------------------------------------------------------------ reads

    def read(self, key: str) -> Lookup:
        """Look ``key`` up: its cached copy, else (write-behind) its queued write."""
        with self._watch(_instrument.CACHE_GET, (key,)) as act:
            reply = self.backend.run_script(
                "cache_read", self.calls.read_keys(key), [key], what="cache read"
            )
            act.note(hit=int(reply[0]) != 0, size=_found_size(reply))
        return self._lookup(reply)

    def read_many(self, keys: Sequence[str]) -> list[Lookup]:
        """:meth:`read` for each of ``keys``, pipelined."""
        calls = [(self.calls.read_keys(key), [key]) for key in keys]
        with self._watch(_instrument.CACHE_GET, keys) as act:
            replies = self.backend.run_script_many("cache_read", calls, what="cache read_many")
            act.note(hit=any(int(r[0]) for r in replies), size=sum(map(_found_size, replies)))
        return [self._lookup(r) for r in replies]

    def _lookup(self, reply: list[Any]) -> Lookup:
        return self.calls.lookup(reply)

    # ------------------------------------------------------------------ writes

    def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """SET each ``(key, cached copy, ttl_ms)``, pipelined."""
        if not items:
            return
        with (
            self._watch(_instrument.CACHE_PUT, [k for k, _, _ in items], items),
            self.backend.commands("cache SET") as client,
        ):
            pipe = client.pipeline(transaction=False)
            for key, cached, ttl_ms in items:
                pipe.set(self.value_key(key), cached, px=ttl_ms)
            pipe.execute()

    def invalidate_many(self, keys: Sequence[str]) -> None:
        """DEL the cached copies of ``keys``."""
        if not keys:
            return
        with self.backend.commands("cache DEL") as client:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.delete(self.value_key(key))
            pipe.execute()

    def fill(
        self, key: str, cached: bytes, ttl_ms: int, *, only_if_absent: bool, token: str = ""
    ) -> bool:
        """Cache a loaded copy (``b""``: none) and release our flight lock ``token``.

        With ``only_if_absent`` an existing copy is kept; in a write-behind namespace
        nothing is stored while a write of the key is queued.
        """
        args = self.calls.fill_args(key, cached, ttl_ms, only_if_absent=only_if_absent, token=token)
        with self._watch(_instrument.CACHE_PUT, (key,), [(key, cached, ttl_ms)]):
            return bool(
                self.backend.run_script(
                    "cache_fill", self.calls.fill_keys(key), args, what="cache fill"
                )
            )

    def fill_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """:meth:`fill` each ``(key, cached copy, ttl_ms)`` only if absent, pipelined."""
        calls = [
            (
                self.calls.fill_keys(key),
                self.calls.fill_args(key, cached, ttl_ms, only_if_absent=True, token=""),
            )
            for key, cached, ttl_ms in items
        ]
        if calls:
            with self._watch(_instrument.CACHE_PUT, [k for k, _, _ in items], items):
                self.backend.run_script_many("cache_fill", calls, what="cache fill_many")

    def try_flight(
        self, key: str, token: str, ttl_ms: int, *, force: bool = False
    ) -> tuple[bool, Lookup]:
        """Take ``key``'s single-flight lock unless a copy is cached (``force``: anyway).

        Returns:
            ``(True, MISS)`` when the lock is ours; ``(False, lookup)`` otherwise, with the
            cached copy if there is one (a ``"miss"`` lookup while another caller loads).
        """
        keys, args = self.calls.flight_call(key, token, ttl_ms, force=force)
        reply = self.backend.run_script("cache_flight", keys, args, what="cache flight")
        return self.calls.flight_result(reply)

    def queue_write(
        self,
        key: str,
        payload: bytes | None,
        *,
        ttl_ms: int,
        header: bytes,
        capacity: int,
    ) -> WriteReply:
        """Queue a write-behind set (``payload=None``: a delete) in one script call."""
        args = self.calls.queue_args(key, payload, ttl_ms, header, capacity)
        with self._watch(_instrument.CACHE_PUT, (key,), [(key, payload, ttl_ms)]):
            reply = self.backend.run_script(
                "cache_wb_write", self.calls.queue_keys(key), args, what="write-behind write"
            )
        return self.calls.write_reply(reply)

    def queue_writes(
        self,
        items: Sequence[tuple[str, bytes | None, int]],
        *,
        header: bytes,
        capacity: int,
    ) -> list[WriteReply]:
        """:meth:`queue_write` each ``(key, payload, ttl_ms)``, pipelined (not atomically)."""
        calls = [
            (
                self.calls.queue_keys(key),
                self.calls.queue_args(key, payload, ttl_ms, header, capacity),
            )
            for key, payload, ttl_ms in items
        ]
        with self._watch(_instrument.CACHE_PUT, [k for k, _, _ in items], items):
            replies = self.backend.run_script_many("cache_wb_write", calls, what="write-behind")
        return [self.calls.write_reply(r) for r in replies]

    def queue_writes_replicated(
        self,
        items: Sequence[tuple[str, bytes | None, int]],
        *,
        header: bytes,
        capacity: int,
        replicas: int,
        timeout_ms: int,
    ) -> tuple[list[WriteReply], int]:
        """:meth:`queue_writes`, then ``WAIT replicas timeout_ms`` on the same connection,
        in one round trip (:func:`~taskguard.cache.replication.send_then_wait`).

        Returns:
            The replies, and how many replicas acknowledged every queued write.
        """
        calls = [
            (
                self.calls.queue_keys(key),
                self.calls.queue_args(key, payload, ttl_ms, header, capacity),
            )
            for key, payload, ttl_ms in items
        ]
        script = named_script("cache_wb_write", ())
        with (
            self._watch(_instrument.CACHE_PUT, [k for k, _, _ in items], items),
            self.backend.commands("write-behind write") as client,
        ):
            replies, acked = send_then_wait(client, script, calls, replicas, timeout_ms)
            if missing := not_loaded(replies):
                client.script_load(script.source)
                again, acked_again = send_then_wait(
                    client, script, [calls[i] for i in missing], replicas, timeout_ms
                )
                # The retry may run on another pooled connection: trust the lower count.
                acked = min(acked, acked_again)
                replies = batch_replies(replies, missing, again)
            else:
                replies = batch_replies(replies, (), ())
        return [self.calls.write_reply(r) for r in replies], acked

    def _watch(
        self,
        op: str,
        keys: Sequence[str],
        items: Sequence[tuple[str, bytes | None, int]] = (),
    ) -> Any:
        """The instrumentation activity of one cache call (``items``: what a put writes)."""
        if not _instrument.hooks():
            return _instrument.activity(op)
        size = sum(_size(payload) for _, payload, _ in items)
        return _instrument.activity(op, namespace=self.namespace, keys=keys, size=size)

    def settle(self, key: str, version: int) -> bool:
        """After a direct store write of ``key`` at ``version``: drop the cached copy and
        the dirty mark, unless the key's queued write is at least as new (then it is
        the value). Returns True when dropped."""
        return bool(self.settle_many([(key, version)])[0])

    def settle_many(self, writes: Sequence[tuple[str, int]]) -> list[bool]:
        """:meth:`settle` each ``(key, version)``, pipelined."""
        calls = [self.calls.settle_call(k, version) for k, version in writes]
        replies = self.backend.run_script_many("cache_wb_settle", calls, what="cache settle")
        return [bool(reply) for reply in replies]

    def queued_ids(self, keys: Sequence[str]) -> list[str]:
        """The stream id of each key's newest queued write ("" = none), pipelined. Reads
        only, so it works while Redis refuses writes (OOM)."""
        if not self.queued or not keys:
            return [""] * len(keys)
        with self.backend.commands("write-behind dirty lookup") as client:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(self.calls.dirty_key(key), key)
            return [text(found) for found in pipe.execute()]

    def register(self) -> int:
        """Record this write-behind namespace (HSETNX); the partition count on record."""
        where = self.backend.keys.write_behind_namespaces()
        with self.backend.commands("write-behind registration") as client:
            pipe = client.pipeline(transaction=False)
            pipe.hsetnx(where, self.namespace, self.partitions)
            pipe.hget(where, self.namespace)
            _, recorded = pipe.execute()
        return int(recorded)


def check_registration(recorded: int, partitions: int, namespace: str) -> None:
    """Raise when ``namespace`` is on record with another partition count."""
    if recorded != partitions:
        raise ConfigurationError(
            f"write-behind namespace {namespace!r} is registered with {recorded} partitions, "
            f"not {partitions}: every writer and the drain must agree (changing it needs "
            "the queue drained first)",
            field="partitions",
        )
