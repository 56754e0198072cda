"""The cache scripts' calls for one namespace, free of I/O: keys, arguments, replies.

:class:`~taskguard.cache.ops.CacheOps` sends them through the sync backend and
``taskguard.aio``'s cache through the asyncio one, so both read and write the same keys
with the same scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskguard.keys import KeySchema

from .codec import Codec, get_codec
from .entry import decode
from .records import VERSION_SCALE, partition_of

__all__ = ["MISS", "CacheCalls", "Lookup", "WriteReply", "text"]


@dataclass(frozen=True)
class Lookup:
    """What Redis knows about a key.

    Attributes:
        kind: ``"cached"`` (a cached copy), ``"queued"`` (no copy, but the newest write is
            still in the write-behind queue) or ``"miss"``.
        found: True when there is a value (False for a negative entry, a queued delete
            and a miss).
        value: The value when ``found``.
        delta: Seconds the cached copy's load took (for early refresh).
        remaining: Seconds the cached copy has left to live.
    """

    kind: str
    found: bool = False
    value: Any = None
    delta: float = 0.0
    remaining: float = 0.0


MISS = Lookup("miss")


@dataclass(frozen=True)
class WriteReply:
    """The write-behind script's answer.

    Attributes:
        queued: True when the write was queued.
        stream_id: The queued entry's id (its version).
        backlog: The partition's queue length when the write was refused.
        dirty_id: The key's newest queued write when the write was refused ("" = none).
    """

    queued: bool
    stream_id: str = ""
    backlog: int = 0
    dirty_id: str = ""


def text(value: bytes | str | None) -> str:
    """A reply's bytes as text ("" for none)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class CacheCalls:
    """Keys, script arguments and reply decoding of namespace ``namespace``.

    Args:
        keys: The key schema.
        namespace: The cache namespace.
        partitions: Partition count: a key's keys carry its partition's hash tag.
        codec: The codec of cached copies.
        queued: True for write-behind: reads consult the queue, fills the dirty index.
    """

    def __init__(
        self, keys: KeySchema, namespace: str, partitions: int, codec: Codec, *, queued: bool
    ) -> None:
        self.keys = keys
        self.namespace = namespace
        self.partitions = partitions
        self.codec = codec
        self.queued = queued

    def partition(self, key: str) -> int:
        """The partition ``key`` belongs to."""
        return partition_of(key, self.partitions)

    def value_key(self, key: str) -> str:
        """The key holding ``key``'s cached copy."""
        return self.keys.cache_value(self.namespace, self.partition(key), key)

    def read_keys(self, key: str) -> list[str]:
        """KEYS of ``cache_read.lua`` for ``key``."""
        p, keys = self.partition(key), self.keys
        value = keys.cache_value(self.namespace, p, key)
        if not self.queued:
            return [value]
        return [value, keys.cache_dirty(self.namespace, p), keys.cache_stream(self.namespace, p)]

    def fill_keys(self, key: str) -> list[str]:
        """KEYS of ``cache_fill.lua`` for ``key``: value, dirty index, flight lock."""
        p, keys = self.partition(key), self.keys
        return [
            keys.cache_value(self.namespace, p, key),
            keys.cache_dirty(self.namespace, p),
            keys.cache_flight(self.namespace, p, key),
        ]

    def fill_args(
        self, key: str, cached: bytes, ttl_ms: int, *, only_if_absent: bool, token: str
    ) -> list[Any]:
        """ARGV of ``cache_fill.lua``."""
        return [key, cached, ttl_ms, int(only_if_absent), int(self.queued), token]

    def flight_call(
        self, key: str, token: str, ttl_ms: int, *, force: bool
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``cache_flight.lua``."""
        keys = self.fill_keys(key)
        return [keys[0], keys[2]], [token, ttl_ms, int(force)]

    def flight_result(self, reply: Sequence[Any]) -> tuple[bool, Lookup]:
        """``(True, MISS)`` when the flight lock is ours; else ``(False, lookup)``, with the
        cached copy if there is one (a ``"miss"`` while another caller loads)."""
        if int(reply[0]) == 1:
            return True, MISS
        if reply[1] is None:
            return False, MISS
        return False, self.lookup([1, reply[1], reply[2]])

    def queue_keys(self, key: str) -> list[str]:
        """KEYS of ``cache_wb_write.lua`` for ``key``: value, stream, dirty index."""
        p, keys = self.partition(key), self.keys
        return [
            keys.cache_value(self.namespace, p, key),
            keys.cache_stream(self.namespace, p),
            keys.cache_dirty(self.namespace, p),
        ]

    def settle_keys(self, key: str) -> list[str]:
        """KEYS of ``cache_wb_settle.lua`` for ``key``: value, dirty index."""
        p, keys = self.partition(key), self.keys
        return [keys.cache_value(self.namespace, p, key), keys.cache_dirty(self.namespace, p)]

    def lookup(self, reply: Sequence[Any]) -> Lookup:
        """The :class:`Lookup` a ``cache_read.lua`` reply reports."""
        kind = int(reply[0])
        if kind == 1:
            cached = decode(self.codec, reply[1])
            return Lookup(
                "cached",
                found=not cached.negative,
                value=cached.value,
                delta=cached.delta,
                remaining=max(int(reply[2]), 0) / 1000,
            )
        if kind == 2:
            if int(reply[2]) or reply[1] is None:
                return Lookup("queued")
            return Lookup("queued", found=True, value=get_codec(text(reply[3])).loads(reply[1]))
        return MISS

    def queue_args(
        self, key: str, payload: bytes | None, ttl_ms: int, header: bytes, capacity: int
    ) -> list[Any]:
        """ARGV of ``cache_wb_write.lua``: a set of ``payload``, or a delete (None)."""
        deleted = payload is None
        return [key, self.codec.name, capacity, int(deleted), ttl_ms, header, payload or b""]

    @staticmethod
    def write_reply(reply: Sequence[Any]) -> WriteReply:
        """The :class:`WriteReply` a ``cache_wb_write.lua`` reply reports."""
        if int(reply[0]) == 1:
            return WriteReply(True, stream_id=text(reply[1]))
        return WriteReply(False, backlog=int(reply[1]), dirty_id=text(reply[2]))

    def settle_call(self, key: str, version: int) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``cache_wb_settle.lua`` for a direct write of ``key`` at
        ``version``."""
        # The version as ms and the rest: Lua numbers are doubles, exact only below 2**53.
        ms, rest = divmod(version, VERSION_SCALE)
        return self.settle_keys(key), [key, ms, rest]

    def dirty_key(self, key: str) -> str:
        """The dirty index holding ``key``'s newest queued write (field ``key``)."""
        return self.keys.cache_dirty(self.namespace, self.partition(key))
