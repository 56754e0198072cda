"""The drain pool: threads that move write-behind records from Redis into a store.

A manager thread keeps the pool's partition leases: it renews those it holds, takes free
ones up to the pool's fair share (``ceil(partitions / live pools)``, so pools on several
hosts split the work) and hands each to the drain thread with the fewest. Each partition has
exactly one consumer at a time, which keeps per-key order. Drain threads never die of an
exception: they log it, back off and carry on.

The manager's half lives in :mod:`taskguard.drain.leases`, and the Redis persistence check
made at start in :mod:`taskguard.drain.persistence`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from types import TracebackType

import redis

from taskguard.backend.redis import HasBackend, RedisBackend, require_redis
from taskguard.errors import BackendError, BackendUnavailable, ConfigurationError
from taskguard.sinks.base import Store

from .backoff import SinkBreaker, backoff_delay
from .config import DrainOptions, DrainSettings
from .consumer import REDIS_ERRORS, Abandoned, Consumer
from .discovery import StreamScan
from .leases import LeaseManager
from .metrics import DrainMetrics, Throughput, queue_metrics
from .partition import Partition
from .persistence import check_persistence

__all__ = ["DrainPool", "check_persistence"]

logger = logging.getLogger("taskguard.drain")


class DrainPool(LeaseManager):
    """Drains write-behind queues into stores, with ``workers`` threads.

    Args:
        backend: The Redis backend the cache writes to (same URL and prefix).
        store: The store of every namespace (or give ``stores``).
        stores: Namespace -> store.
        namespaces: The namespaces to drain; None drains every write-behind namespace
            (registered ones are re-read every few seconds; streams of unregistered ones
            are found by a SCAN of the keyspace every 30 s). A named namespace is drained
            even if it is not registered: its streams are probed.
        workers: Drain threads.
        batch_size: Most records read from a partition per batch.
        linger: Seconds to let a batch fill after its first record arrives.
        lease_ttl: Seconds a partition lease lives unless renewed (renewed every third).
        max_deliveries: A record delivered more often is dead-lettered, so a record that
            crashes the drain cannot block its partition.
        claim_idle: Seconds after which records another consumer left unacknowledged are
            claimed (those of a consumer whose lease lapsed are claimed at once).
        backoff_base: First wait after a transient store error.
        backoff_max: Longest wait between retries.
        breaker_threshold: Consecutive transient failures that open a store's breaker.

    Example:
        >>> pool = DrainPool(backend, store=SQLStore("sqlite:///app.db"))  # doctest: +SKIP
        >>> with pool:
        ...     pool.wait_idle(10)
    """

    def __init__(
        self,
        backend: RedisBackend | HasBackend,
        store: Store | None = None,
        *,
        stores: Mapping[str, Store] | None = None,
        namespaces: list[str] | tuple[str, ...] | None = None,
        workers: int = DrainSettings.workers,
        batch_size: int = DrainOptions.batch_size,
        linger: float = DrainOptions.linger,
        lease_ttl: float = DrainOptions.lease_ttl,
        max_deliveries: int = DrainOptions.max_deliveries,
        claim_idle: float = DrainOptions.claim_idle,
        backoff_base: float = DrainOptions.backoff_base,
        backoff_max: float = DrainOptions.backoff_max,
        breaker_threshold: int = 5,
    ) -> None:
        redis_backend = require_redis(backend, "drain pool")
        if (store is None) == (stores is None):
            raise ConfigurationError("give either store or stores", field="store")
        if workers < 1 or batch_size < 1 or max_deliveries < 1 or lease_ttl <= 0:
            raise ConfigurationError(
                "workers, batch_size, max_deliveries and lease_ttl must be positive",
                field="workers",
            )
        self.backend = redis_backend
        self.keys = redis_backend.keys
        self._store = store
        self._stores: dict[str, Store] = dict(stores or {})
        self.namespaces = tuple(namespaces) if namespaces is not None else None
        self.workers = workers
        self.options = DrainOptions(
            batch_size=batch_size,
            linger=linger,
            lease_ttl=lease_ttl,
            max_deliveries=max_deliveries,
            claim_idle=claim_idle,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self.breaker_threshold = breaker_threshold
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.throughput = Throughput()
        self._breakers: dict[str, SinkBreaker] = {}
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._held: dict[Partition, int] = {}  # partition -> drain thread index
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._wake = [threading.Event() for _ in range(workers)]
        self._threads: list[threading.Thread] = []
        self._manager: threading.Thread | None = None
        self._tick = min(lease_ttl / 3, 1.0)
        self._discovered = -math.inf
        self._probed = -math.inf
        self._scan = StreamScan(redis_backend)

    def __repr__(self) -> str:
        return f"<DrainPool {self.owner} workers={self.workers} held={len(self._held)}>"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> DrainPool:
        """Check Redis persistence, then start the manager and the drain threads."""
        if self._threads:
            raise RuntimeError("the drain pool is already started")
        check_persistence(self.backend)
        # The first leases are taken before any drain thread starts, so each starts with
        # its share: taken while the first threads already read and parse, one partition
        # at a time, they took about 100 ms to hand out 8 partitions here. They are the
        # registry's partitions: the streams (a probe of 1024 keys, 5-11 ms) are looked at
        # by the manager's first tick, a tick later (at once if Redis cannot be reached
        # now). Renewing the leases just taken cost the threads' first batches 20-45 ms of
        # the GIL.
        balanced = False
        with contextlib.suppress(*REDIS_ERRORS):
            self._balance(streams=False)
            balanced = True
        self._manager = threading.Thread(
            target=self._manage, args=(balanced,), name="taskguard-drain-manager", daemon=True
        )
        self._manager.start()
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._work, args=(index,), name=f"taskguard-drain-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        logger.info("drain: pool %s started with %d thread(s)", self.owner, self.workers)
        return self

    def stop(self, timeout: float = DrainSettings.stop_timeout) -> bool:
        """Stop reading, finish the in-flight batches (write and acknowledge), release the
        leases and end the threads.

        Args:
            timeout: Seconds to wait for in-flight batches. A batch still waiting for the
                store then is left pending in Redis (re-delivered by the next consumer).

        Returns:
            True if every thread ended in time.
        """
        self._stopping.set()
        for event in self._wake:
            event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        if any(t.is_alive() for t in self._threads):
            self._abandon.set()
            for thread in self._threads:
                thread.join(1.0)
        if self._manager is not None:
            self._manager.join(max(deadline - time.monotonic(), 1.0))
        self._release_all()
        done = not any(t.is_alive() for t in self._threads)
        logger.info("drain: pool %s stopped%s", self.owner, "" if done else " (abandoned)")
        return done

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads to end (after :meth:`stop`)."""
        for thread in [*self._threads, *([self._manager] if self._manager else [])]:
            thread.join(timeout)

    def __enter__(self) -> DrainPool:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ observing

    def held(self) -> list[tuple[str, int]]:
        """The (namespace, partition) pairs whose lease this pool holds."""
        with self._lock:
            return sorted((p.namespace, p.index) for p in self._held)

    def metrics(self) -> DrainMetrics:
        """Queue figures of the drained namespaces plus this pool's counters."""
        with self._lock:
            partitions = list(self._partitions.values())
        queue = queue_metrics(self.backend, partitions)
        return replace(queue, **self.throughput.snapshot())

    def wait_idle(self, timeout: float) -> bool:
        """Block until every drained partition's backlog and pending are zero.

        Looks for streams once first (a whole sweep, or a probe of the named
        namespaces), so work that only the streams know of is waited for too.

        Returns:
            True when idle, False if ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        full = True
        while True:
            try:
                self._discover(force=True, full=full)
                full = False
                current = self.metrics()
                if current.backlog == 0 and current.pending == 0 and self._partitions:
                    return True
            except REDIS_ERRORS:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # ------------------------------------------------------------ drain threads

    def _assigned(self, index: int) -> list[Partition]:
        with self._lock:
            return [p for p, owner in self._held.items() if owner == index]

    def _work(self, index: int) -> None:
        consumer = Consumer(
            self.backend,
            self.owner,
            self.options,
            stores=self._stores,
            breakers=self._breakers,
            throughput=self.throughput,
            stopping=self._stopping,
            abandon=self._abandon,
            sender=self,
        )
        attempt = 0
        while not self._stopping.is_set():
            partitions = self._assigned(index)
            for partition in [p for p in partitions if p.surrender]:
                self._surrender(partition)
            partitions = [p for p in partitions if not p.surrender]
            if not partitions:
                self._wake[index].wait(self._tick)
                self._wake[index].clear()
                continue
            try:
                consumer.cycle(partitions)
                attempt = 0
            except Abandoned:
                return
            except REDIS_ERRORS as exc:
                if _no_group(exc):
                    self._recreate_groups(partitions)
                    continue
                delay = max(backoff_delay(attempt, 0.1, 5.0), 0.05)
                attempt += 1
                logger.warning("drain: redis unavailable (retry in %.2fs): %s", delay, exc)
                self._stopping.wait(delay)
            except Exception:
                logger.exception("drain: drain thread %d failed a cycle (continuing)", index)
                self._stopping.wait(1.0)

    def _surrender(self, partition: Partition) -> None:
        self._drop(partition)
        try:
            partition.release(self.backend, self.owner)
            logger.info("drain: released %s (more than this pool's share)", partition.name)
        except REDIS_ERRORS as exc:
            logger.warning("drain: could not release %s: %s", partition.name, exc)

    def _recreate_groups(self, partitions: list[Partition]) -> None:
        for partition in partitions:
            partition.ensure_group(self.backend)
            partition.needs_claim = True


def _no_group(exc: BaseException) -> bool:
    """Whether ``exc`` says a partition's consumer group is gone (its stream was deleted).

    The port raises :class:`BackendError` from the driver's error; look at both.
    """
    cause = exc.__cause__ if isinstance(exc, (BackendUnavailable, BackendError)) else exc
    return isinstance(cause, redis.ResponseError) and "NOGROUP" in str(cause)
