"""The write-behind queue's record format, shared by the cache (writer) and the drain pool.

A namespace's writes are queued in P partition streams; a key always goes to partition
``crc32(key) mod P``, so one consumer per partition keeps per-key order. A stream entry has
the fields:

``k``
    the key (verbatim);
``v``
    the encoded value (absent for a delete);
``d``
    ``"1"`` for a delete (absent otherwise);
``c``
    the codec the value was encoded with (``"json"`` or ``"msgpack"``);
``V``
    an explicit version (absent normally; set when a dead letter is re-queued, so the
    record keeps the version of the original write and cannot overwrite a newer one).

The entry's stream id ``<ms>-<seq>`` is the write's version: ``ms * 1_000_000 + seq``
(:func:`version_of`), an integer that orders every write of a partition and fits a 64-bit
column for 290 years. A write made without Redis (Redis down: the cache writes straight to
the store) takes :func:`local_version`, on the same scale, from the local clock.
"""

from __future__ import annotations

import itertools
import time
import zlib
from dataclasses import dataclass

__all__ = [
    "MAX_PARTITIONS",
    "VERSION_SCALE",
    "QueuedWrite",
    "local_version",
    "partition_of",
    "version_above",
    "version_of",
]

#: A stream id ``ms-seq`` becomes ``ms * VERSION_SCALE + seq``.
VERSION_SCALE = 1_000_000

#: The most partitions a namespace may have. Each is a stream, a dirty index and a drain
#: lease, renewed every few seconds by the pool that holds it: more partitions than drain
#: threads across the fleet buy nothing, and Redis Cluster has 16384 slots.
MAX_PARTITIONS = 1024

_local_seq = itertools.count()


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key``: ``crc32(utf-8 key) mod partitions``."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def version_of(stream_id: str | bytes) -> int:
    """The version of a write queued as stream entry ``stream_id``."""
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode("ascii")
    ms, _, seq = stream_id.partition("-")
    return int(ms) * VERSION_SCALE + int(seq or 0)


def local_version() -> int:
    """A version from this host's clock, for a write that bypasses the queue.

    It ranks after every queued write made in an earlier millisecond (by a Redis server
    whose clock agrees with this host's), and two calls in one process never tie.
    """
    ms = time.time_ns() // 1_000_000
    return ms * VERSION_SCALE + VERSION_SCALE // 2 + next(_local_seq) % (VERSION_SCALE // 2)


def version_above(queued_id: str) -> int:
    """A version for a direct store write: from the local clock, and above the queued
    write ``queued_id``'s ("": none queued)."""
    version = local_version()
    return max(version, version_of(queued_id) + 1) if queued_id else version


@dataclass(frozen=True)
class QueuedWrite:
    """One decoded stream entry.

    Attributes:
        stream_id: The entry id (``"<ms>-<seq>"``).
        key: The cache key.
        payload: The encoded value (``None`` for a delete).
        codec: The codec name that encoded ``payload``.
        deleted: True for a delete.
    """

    stream_id: str
    key: str
    payload: bytes | None
    codec: str
    deleted: bool
    explicit_version: int | None = None

    @property
    def version(self) -> int:
        """The write's version: ``explicit_version`` or the stream id's (:func:`version_of`)."""
        if self.explicit_version is not None:
            return self.explicit_version
        return version_of(self.stream_id)

    @classmethod
    def from_entry(cls, stream_id: str | bytes, fields: dict[bytes, bytes]) -> QueuedWrite:
        """Decode an entry as XREADGROUP / XRANGE return it (bytes, not decoded)."""
        sid = stream_id.decode("ascii") if isinstance(stream_id, bytes) else stream_id
        deleted = fields.get(b"d") == b"1"
        explicit = fields.get(b"V")
        return cls(
            stream_id=sid,
            key=fields[b"k"].decode("utf-8"),
            payload=None if deleted else fields.get(b"v"),
            codec=fields.get(b"c", b"json").decode("ascii"),
            deleted=deleted,
            explicit_version=int(explicit) if explicit is not None else None,
        )
