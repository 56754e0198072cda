"""Where the write-behind work is: the namespace registry, and the streams themselves.

The registry hash (``KeySchema.write_behind_namespaces``) is a fast index of namespaces
and their partition counts, but it can vanish on its own (deleted, or lost while a writer
that registered long ago keeps queueing after a FLUSHDB or a restart without persistence).
So it is never the only way to find work: the streams are found from their own keys,

* for a namespace named by the caller, by probing the streams of its every possible
  partition (``EXISTS`` on :data:`~taskguard.cache.records.MAX_PARTITIONS` keys, one
  pipeline);
* for every namespace, by walking the keyspace with ``SCAN ... MATCH <stream pattern>
  TYPE stream``, in bounded steps (:class:`StreamScan`), each match checked against the
  key schema.

A partition found either way is drained; metrics count the streams found.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from taskguard.backend.redis import RedisBackend
from taskguard.backend.topology import scan_page
from taskguard.cache.records import MAX_PARTITIONS
from taskguard.keys import KeySchema

__all__ = [
    "SCAN_EVERY",
    "Found",
    "StreamScan",
    "merge",
    "namespace_streams",
    "queued_partitions",
    "registered_namespaces",
    "scan_streams",
    "stream_of",
]

#: Namespace -> the partitions that have a stream (or are registered).
Found = dict[str, set[int]]

#: Seconds between two sweeps of the keyspace (or probes of named namespaces).
SCAN_EVERY = 30.0
#: Keys per SCAN call.
SCAN_COUNT = 1000
#: Seconds a pool's manager spends scanning per tick (so leases are renewed on time).
SCAN_BUDGET = 0.05

# A stream key ends with ":c:<namespace>:<partition>}:wb"; namespaces hold no ":" or "}".
_STREAM_TAIL = re.compile(r":c:([A-Za-z0-9_.-]+):(\d+)\}:wb\Z")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def registered_namespaces(backend: RedisBackend) -> dict[str, int]:
    """Every registered write-behind namespace and its partition count."""
    with backend.commands("drain namespaces") as client:
        raw = client.hgetall(backend.keys.write_behind_namespaces())
    return {_text(ns): int(count) for ns, count in raw.items()}


def stream_of(keys: KeySchema, key: bytes | str) -> tuple[str, int] | None:
    """``(namespace, partition)`` if ``key`` is a write-behind stream of ``keys``."""
    name = _text(key)
    match = _STREAM_TAIL.search(name)
    if match is None:
        return None
    namespace, partition = match.group(1), int(match.group(2))
    return (namespace, partition) if keys.cache_stream(namespace, partition) == name else None


def merge(into: Found, more: Found) -> Found:
    """Add ``more``'s partitions to ``into`` (returned)."""
    for namespace, partitions in more.items():
        into.setdefault(namespace, set()).update(partitions)
    return into


def namespace_streams(backend: RedisBackend, namespace: str) -> set[int]:
    """The partitions of ``namespace`` that have a stream (one pipeline of EXISTS)."""
    keys = backend.keys
    with backend.commands("drain stream probe") as client:
        pipe = client.pipeline(transaction=False)
        for index in range(MAX_PARTITIONS):
            pipe.exists(keys.cache_stream(namespace, index))
        replies = pipe.execute()
    return {index for index, exists in enumerate(replies) if exists}


class StreamScan:
    """A sweep of the keyspace for write-behind streams, a few SCAN calls at a time.

    Args:
        backend: The Redis backend (its key prefix decides which streams are found).
        every: Seconds from the end of a sweep to the start of the next.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        backend: RedisBackend,
        *,
        every: float = SCAN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.every = every
        self.clock = clock
        self.pattern = backend.keys.cache_stream_pattern()
        self._cursor: int | None = None  # None: no sweep in progress
        self._ended = -float("inf")
        self._lock = threading.Lock()  # the manager thread and wait_idle() both step

    def step(self, budget: float = SCAN_BUDGET) -> Found:
        """Scan for up to ``budget`` seconds (one SCAN call at least) if a sweep is in
        progress or due; the streams found in this step."""
        with self._lock:
            now = self.clock()
            if self._cursor is None:
                if now - self._ended < self.every:
                    return {}
                self._cursor = 0
            return self._step(now + budget)

    def _step(self, deadline: float) -> Found:
        found: Found = {}
        with self.backend.commands("drain stream scan") as client:
            while self._cursor is not None:
                cursor, names = self._scan(client, self._cursor)
                merge(found, self._parse(names))
                if cursor == 0:
                    self._cursor, self._ended = None, self.clock()
                else:
                    self._cursor = cursor
                    if self.clock() >= deadline:
                        break
        return found

    def sweep(self) -> Found:
        """A whole sweep, now (unbounded: for one-off calls such as metrics)."""
        found: Found = {}
        cursor = 0
        with self.backend.commands("drain stream scan") as client:
            while True:
                cursor, names = self._scan(client, cursor)
                merge(found, self._parse(names))
                if cursor == 0:
                    return found

    def _scan(self, client: Any, cursor: int) -> tuple[int, list[Any]]:
        return scan_page(client, cursor, match=self.pattern, count=SCAN_COUNT, _type="stream")

    def _parse(self, names: Iterable[bytes | str]) -> Found:
        found: Found = {}
        for name in names:
            stream = stream_of(self.backend.keys, name)
            if stream is not None:
                found.setdefault(stream[0], set()).add(stream[1])
        return found


def scan_streams(backend: RedisBackend) -> Found:
    """Every write-behind stream of the backend's prefix (one whole sweep)."""
    return StreamScan(backend).sweep()


def queued_partitions(backend: RedisBackend, namespace: str | None = None) -> Found:
    """The partitions that hold (or may hold) work: registered, or with a stream.

    Args:
        backend: The Redis backend.
        namespace: Only this namespace (its streams are probed, not scanned for).
    """
    found: Found = {ns: set(range(n)) for ns, n in registered_namespaces(backend).items()}
    if namespace is None:
        return merge(found, scan_streams(backend))
    streams = namespace_streams(backend, namespace)
    partitions = found.get(namespace, set()) | streams
    return {namespace: partitions} if partitions else {}
