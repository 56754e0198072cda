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
from .records import partition_of

__all__ = ["MISS", "CacheCalls", "Lookup", "text"]


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
