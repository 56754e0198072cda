"""The drain pool: threads that move write-behind records from Redis into a store.

A manager thread keeps the pool's partition leases: it renews those it holds, takes free
ones up to the pool's fair share (``ceil(partitions / live pools)``, so pools on several
hosts split the work) and hands each to the drain thread with the fewest. Each partition has
exactly one consumer at a time, which keeps per-key order. Drain threads never die of an
exception: they log it, back off and carry on.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from types import TracebackType

import redis

from taskguard.backend.redis import RedisBackend
from taskguard.errors import ConfigurationError
from taskguard.sinks.base import Store

from .backoff import SinkBreaker, backoff_delay
from .config import DrainOptions, DrainSettings
from .consumer import REDIS_ERRORS, Abandoned, Consumer
from .metrics import DrainMetrics, Throughput, queue_metrics
from .partition import Partition, registered_namespaces

__all__ = ["DrainPool", "check_persistence"]

logger = logging.getLogger("taskguard.drain")

_PERSISTENCE_WARNING = "write-behind records live only in Redis until drained"


def check_persistence(client: redis.Redis) -> list[str]:
    """Warn (and return the warnings) if Redis may lose queued records.

    AOF off loses what was written since the last snapshot on a restart; an ``allkeys-*``
    eviction policy may evict a partition's stream under memory pressure. CONFIG may be
    disabled (managed Redis): then nothing is checked.
    """
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("maxmemory-policy"))
    except (redis.RedisError, OSError) as exc:
        logger.info("drain: cannot read Redis persistence settings (%s); not checked", exc)
        return []
    found = {str(k, "utf-8") if isinstance(k, bytes) else k: v for k, v in config.items()}
    text = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in found.items()}
    warnings = []
    if text.get("appendonly", "yes") != "yes":
        warnings.append(
            f"Redis has appendonly=no: {_PERSISTENCE_WARNING}, so a Redis restart loses "
            "those written since the last snapshot. Set appendonly yes (appendfsync everysec)."
        )
    if text.get("maxmemory-policy", "").startswith("allkeys-"):
        warnings.append(
            f"Redis has maxmemory-policy={text['maxmemory-policy']}: {_PERSISTENCE_WARNING}, "
            "and eviction may delete them. Use noeviction or a volatile-* policy."
        )
    for warning in warnings:
        logger.warning("taskguard drain: %s", warning)
    return warnings


class DrainPool:
    """Drains write-behind queues into stores, with ``workers`` threads.

    Args:
        backend: The Redis backend the cache writes to (same URL and prefix).
        store: The store of every namespace (or give ``stores``).
        stores: Namespace -> store.
        namespaces: The namespaces to drain; None drains every registered namespace
            (re-read every few seconds, so new ones are picked up).
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
        backend: RedisBackend,
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
        if not isinstance(backend, RedisBackend):
            raise ConfigurationError("the drain pool needs a Redis backend", field="backend")
        if (store is None) == (stores is None):
            raise ConfigurationError("give either store or stores", field="store")
        if workers < 1 or batch_size < 1 or max_deliveries < 1 or lease_ttl <= 0:
            raise ConfigurationError(
                "workers, batch_size, max_deliveries and lease_ttl must be positive",
                field="workers",
            )
        self.backend = backend
        self.keys = backend.keys
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

    def __repr__(self) -> str:
        return f"<DrainPool {self.owner} workers={self.workers} held={len(self._held)}>"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> DrainPool:
        """Check Redis persistence, then start the manager and the drain threads."""
        if self._threads:
            raise RuntimeError("the drain pool is already started")
        check_persistence(self.backend.client)
        self._manager = threading.Thread(
            target=self._manage, name="taskguard-drain-manager", daemon=True
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
        queue = queue_metrics(self.backend.client, partitions)
        return replace(queue, **self.throughput.snapshot())

    def wait_idle(self, timeout: float) -> bool:
        """Block until every drained partition's backlog and pending are zero.

        Returns:
            True when idle, False if ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._discover(force=True)
                current = self.metrics()
                if current.backlog == 0 and current.pending == 0 and self._partitions:
                    return True
            except REDIS_ERRORS:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # ------------------------------------------------------------ leases (manager)

    def _manage(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                self._balance()
                attempt = 0
                wait = self._tick
            except REDIS_ERRORS as exc:
                wait = max(backoff_delay(attempt, 0.2, self._tick), 0.05)
                attempt += 1
                logger.warning("drain: cannot reach Redis to manage leases: %s", exc)
            except Exception:
                wait = self._tick
                logger.exception("drain: lease manager failed (continuing)")
            self._stopping.wait(wait)

    def _discover(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._discovered < 5.0:
            return
        self._discovered = now
        registered = registered_namespaces(self.backend.client, self.keys)
        wanted = self.namespaces if self.namespaces is not None else tuple(registered)
        with self._lock:
            for namespace in wanted:
                store = self._stores.get(namespace, self._store)
                count = registered.get(namespace)
                if store is None or count is None:
                    continue
                self._stores.setdefault(namespace, store)
                self._breakers.setdefault(
                    namespace,
                    SinkBreaker(
                        threshold=self.breaker_threshold,
                        open_for=max(self.options.backoff_max / 4, self.options.backoff_base),
                    ),
                )
                for index in range(count):
                    if (namespace, index) not in self._partitions:
                        self._partitions[namespace, index] = Partition.of(
                            self.keys, namespace, index
                        )

    def _balance(self) -> None:
        client = self.backend.client
        ttl = self.options.lease_ttl
        self._discover()
        seconds, micros = client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        pipe = client.pipeline(transaction=False)
        pipe.zadd(self.keys.drain_pools(), {self.owner: now_ms + int(ttl * 3000)})
        pipe.zremrangebyscore(self.keys.drain_pools(), "-inf", now_ms)
        pipe.zcard(self.keys.drain_pools())
        live = max(int(pipe.execute()[2]), 1)
        with self._lock:
            held = list(self._held)
            candidates = list(self._partitions.values())
        for partition in held:
            if not partition.renew(client, self.owner, ttl):
                logger.warning("drain: lost the lease of %s", partition.name)
                self._drop(partition)
        target = math.ceil(len(candidates) / live)
        with self._lock:
            keeping = [p for p in self._held if not p.surrender]
            for partition in keeping[target:]:
                partition.surrender = True
        random.shuffle(candidates)
        for partition in candidates:
            with self._lock:
                if len(self._held) >= target:
                    break
                if partition in self._held:
                    continue
            if partition.acquire(client, self.owner, ttl):
                partition.ensure_group(client)
                self._adopt(partition)

    def _adopt(self, partition: Partition) -> None:
        with self._lock:
            loads = [0] * self.workers
            for index in self._held.values():
                loads[index] += 1
            index = loads.index(min(loads))
            partition.needs_claim = True
            partition.surrender = False
            self._held[partition] = index
        self._wake[index].set()
        logger.info("drain: %s now drained by %s", partition.name, self.owner)

    def _drop(self, partition: Partition) -> None:
        with self._lock:
            self._held.pop(partition, None)

    def _release_all(self) -> None:
        with self._lock:
            held = list(self._held)
            self._held.clear()
        try:
            for partition in held:
                partition.release(self.backend.client, self.owner)
            self.backend.client.zrem(self.keys.drain_pools(), self.owner)
        except REDIS_ERRORS as exc:
            logger.warning("drain: could not release leases (they expire on their own): %s", exc)

    # ------------------------------------------------------------ drain threads

    def _assigned(self, index: int) -> list[Partition]:
        with self._lock:
            return [p for p, owner in self._held.items() if owner == index]

    def _work(self, index: int) -> None:
        consumer = Consumer(
            self.backend.client,
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
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
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
            partition.release(self.backend.client, self.owner)
            logger.info("drain: released %s (more than this pool's share)", partition.name)
        except REDIS_ERRORS as exc:
            logger.warning("drain: could not release %s: %s", partition.name, exc)

    def _recreate_groups(self, partitions: list[Partition]) -> None:
        for partition in partitions:
            partition.ensure_group(self.backend.client)
            partition.needs_claim = True
