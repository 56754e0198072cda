"""Drain metrics: how far behind the database is, and how fast the pool writes.

:func:`metrics` reads the queue side from Redis alone (no pool needed, e.g. for a status
command); :meth:`taskguard.drain.DrainPool.metrics` adds the pool's own counters.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from taskguard.backend.redis import RedisBackend
from taskguard.errors import ConfigurationError

from .discovery import queued_partitions
from .partition import GROUP, Partition

__all__ = ["DrainMetrics", "Throughput", "metrics", "queue_metrics"]


@dataclass(frozen=True)
class DrainMetrics:
    """A snapshot of the write-behind queue and the drain.

    Attributes:
        backlog: Records queued and not yet written (every partition's XLEN; written
            records are deleted from their stream).
        oldest_age: Seconds since the oldest queued record was written (0 when empty).
        pending: Records delivered to a drain consumer and not yet acknowledged.
        dead_letters: Records in the dead-letter stream(s).
        rows_per_second: Rows the pool wrote per second, over the last 10 seconds.
        coalescing_ratio: Records acknowledged per row written (>= 1: several writes to
            a key in one batch become one row).
        rows_written: Rows the pool wrote since it started.
        records_acked: Records the pool acknowledged since it started.
    """

    backlog: int = 0
    oldest_age: float = 0.0
    pending: int = 0
    dead_letters: int = 0
    rows_per_second: float = 0.0
    coalescing_ratio: float = 1.0
    rows_written: int = 0
    records_acked: int = 0

    def __add__(self, other: DrainMetrics) -> DrainMetrics:
        """Queue figures of two namespaces together (pool counters are kept from ``self``)."""
        return replace(
            self,
            backlog=self.backlog + other.backlog,
            oldest_age=max(self.oldest_age, other.oldest_age),
            pending=self.pending + other.pending,
            dead_letters=self.dead_letters + other.dead_letters,
        )


def queue_metrics(backend: RedisBackend, partitions: Sequence[Partition]) -> DrainMetrics:
    """Backlog, oldest age, pending and dead letters of ``partitions``, in one pipeline.

    Raises:
        BackendUnavailable: Redis could not be reached.
    """
    if not partitions:
        return DrainMetrics()
    dead_letter_keys = sorted({p.dead_letters for p in partitions})
    with backend.commands("drain metrics") as client:
        # TIME on its own: a Redis Cluster pipeline cannot carry a key-less command.
        seconds, micros = client.time()
        pipe = client.pipeline(transaction=False)
        for partition in partitions:
            pipe.xlen(partition.stream)
            pipe.xrange(partition.stream, "-", "+", count=1)
            pipe.xpending(partition.stream, GROUP)
        for key in dead_letter_keys:
            pipe.xlen(key)
        replies = pipe.execute(raise_on_error=False)
    now_ms = seconds * 1000 + micros // 1000
    backlog = pending = 0
    oldest_ms: int | None = None
    for i in range(len(partitions)):
        length, first, summary = replies[3 * i : 3 + 3 * i]
        backlog += int(length)
        if first and not isinstance(first, Exception):
            ms = int(first[0][0].split(b"-")[0])
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
        if isinstance(summary, dict):  # an error (no group yet) counts as none pending
            pending += int(summary["pending"])
    dead = sum(int(n) for n in replies[3 * len(partitions) :])
    age = max(now_ms - oldest_ms, 0) / 1000 if oldest_ms is not None else 0.0
    return DrainMetrics(backlog=backlog, oldest_age=age, pending=pending, dead_letters=dead)


def metrics(backend: RedisBackend, namespace: str | None = None) -> DrainMetrics:
    """The queue figures of ``namespace`` (every write-behind namespace when None).

    Counted from the streams themselves, whether or not the namespace is in the registry
    (:mod:`taskguard.drain.discovery`): a named namespace's partitions are probed (one
    pipeline), every namespace's are found with a ``SCAN`` of the keyspace, so call it
    for a status line, not in a tight loop.

    Args:
        backend: The Redis backend the cache writes to (same prefix).
        namespace: A write-behind namespace.

    Raises:
        ConfigurationError: ``namespace`` is neither registered nor has a stream.
        BackendUnavailable: Redis could not be reached.
    """
    found = queued_partitions(backend, namespace)
    if namespace is not None and not found:
        raise ConfigurationError(
            f"no write-behind namespace {namespace!r} is registered or queued",
            field="namespace",
        )
    partitions = [
        Partition.of(backend.keys, ns, index)
        for ns, indices in sorted(found.items())
        for index in sorted(indices)
    ]
    return queue_metrics(backend, partitions)


class Throughput:
    """Thread-safe counters of rows written and records acknowledged, with a recent rate.

    Args:
        window: Seconds the rate is measured over.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._started = clock()
        self.rows_written = 0
        self.records_acked = 0

    def record(self, rows: int, records: int) -> None:
        """Count one committed batch."""
        with self._lock:
            now = self._clock()
            self.rows_written += rows
            self.records_acked += records
            self._events.append((now, rows))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def snapshot(self) -> dict[str, Any]:
        """``rows_per_second``, ``coalescing_ratio``, ``rows_written``, ``records_acked``."""
        with self._lock:
            now = self._clock()
            self._trim(now)
            span = min(self.window, max(now - self._started, 1e-9))
            rate = sum(rows for _, rows in self._events) / span
            ratio = self.records_acked / self.rows_written if self.rows_written else 1.0
            return {
                "rows_per_second": rate,
                "coalescing_ratio": ratio,
                "rows_written": self.rows_written,
                "records_acked": self.records_acked,
            }
