"""The drain pool's partition leases, kept by its manager thread.

The manager finds the partitions to drain (the registry every few seconds, and the streams
themselves: :mod:`taskguard.drain.discovery`), renews the leases the pool holds, takes free
ones up to the pool's fair share (``ceil(partitions / live pools)``, so pools on several
hosts split the work), marks those beyond it for their drain thread to release, and hands
each new one to the drain thread with the fewest.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Sequence

from taskguard.backend.redis import RedisBackend
from taskguard.keys import KeySchema
from taskguard.sinks.base import Store

from .backoff import SinkBreaker, backoff_delay
from .config import DrainOptions
from .consumer import REDIS_ERRORS
from .discovery import (
    SCAN_EVERY,
    Found,
    StreamScan,
    merge,
    namespace_streams,
    registered_namespaces,
)
from .partition import Partition, ensure_groups

__all__ = ["LeaseManager"]

logger = logging.getLogger("taskguard.drain")


class LeaseManager:
    """The manager-thread half of :class:`~taskguard.drain.pool.DrainPool` (a mixin).

    ``DrainPool.__init__`` sets the attributes declared here; the drain threads find their
    partitions in ``_held`` (partition -> drain thread index).
    """

    backend: RedisBackend
    keys: KeySchema
    namespaces: tuple[str, ...] | None
    workers: int
    options: DrainOptions
    breaker_threshold: int
    owner: str
    _store: Store | None
    _stores: dict[str, Store]
    _breakers: dict[str, SinkBreaker]
    _partitions: dict[tuple[str, int], Partition]
    _held: dict[Partition, int]
    _lock: threading.Lock
    _stopping: threading.Event
    _wake: list[threading.Event]
    _tick: float
    _discovered: float
    _probed: float
    _scan: StreamScan

    def _manage(self, balanced: bool = False) -> None:
        """Keep the leases, one tick apart (the first after a tick when ``start`` balanced)."""
        attempt = 0
        if balanced:
            self._stopping.wait(self._tick)
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

    def _discover(self, *, force: bool = False, full: bool = False, streams: bool = True) -> None:
        """Learn the partitions to drain.

        Every few seconds (or ``force``): the registry. Every ``SCAN_EVERY`` seconds (or
        ``full``): the streams of the named namespaces, probed. With no names, a sweep
        of the keyspace for streams goes on in bounded steps, one per call (``full``: a
        whole sweep now). A stream is drained whether or not its namespace is registered.
        ``streams=False`` reads the registry alone, and the next call looks again.
        """
        now = time.monotonic()
        found: Found = {}
        if not streams or force or full or now - self._discovered >= 5.0:
            found = {ns: set(range(n)) for ns, n in registered_namespaces(self.backend).items()}
            if streams:
                self._discovered = now
            probe = full or now - self._probed >= SCAN_EVERY
            if self.namespaces is not None and streams and probe:
                self._probed = now
                for namespace in self.namespaces:
                    found.setdefault(namespace, set()).update(
                        namespace_streams(self.backend, namespace)
                    )
        if self.namespaces is None and streams:
            merge(found, self._scan.sweep() if full else self._scan.step())
        self._add(found)

    def _add(self, found: Found) -> None:
        wanted = self.namespaces if self.namespaces is not None else tuple(found)
        with self._lock:
            for namespace in wanted:
                store = self._stores.get(namespace, self._store)
                indices = found.get(namespace)
                if store is None or not indices:
                    continue
                self._stores.setdefault(namespace, store)
                self._breakers.setdefault(
                    namespace,
                    SinkBreaker(
                        threshold=self.breaker_threshold,
                        open_for=max(self.options.backoff_max / 4, self.options.backoff_base),
                    ),
                )
                for index in sorted(indices):
                    if (namespace, index) not in self._partitions:
                        self._partitions[namespace, index] = Partition.of(
                            self.keys, namespace, index
                        )

    def _balance(self, *, streams: bool = True) -> None:
        """Renew the leases held, take free ones up to the pool's share and mark those
        beyond it for release; ``streams``: as :meth:`_discover`."""
        backend = self.backend
        ttl = self.options.lease_ttl
        self._discover(streams=streams)
        with backend.commands("drain pool registry") as client:
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
        for partition, ours in zip(held, renew_leases(backend, held, self.owner, ttl), strict=True):
            if not ours:
                logger.warning("drain: lost the lease of %s", partition.name)
                self._drop(partition)
        target = math.ceil(len(candidates) / live)
        with self._lock:
            keeping = [p for p in self._held if not p.surrender]
            for partition in keeping[target:]:
                partition.surrender = True
        random.shuffle(candidates)
        with self._lock:
            free = [p for p in candidates if p not in self._held]
            need = target - len(self._held)
        # As many free partitions as this pool lacks, in one pipeline; then the next as
        # many as were held by others, until the share is reached or none are left.
        while need > 0 and free:
            trying, free = free[:need], free[need:]
            taken = acquire_leases(backend, trying, self.owner, ttl)
            won = [p for p, ours in zip(trying, taken, strict=True) if ours]
            ensure_groups(backend, won)
            for partition in won:
                self._adopt(partition)
            need -= len(won)

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
                partition.release(self.backend, self.owner)
            with self.backend.commands("drain pool unregister") as client:
                client.zrem(self.keys.drain_pools(), self.owner)
        except REDIS_ERRORS as exc:
            logger.warning("drain: could not release leases (they expire on their own): %s", exc)


def acquire_leases(
    backend: RedisBackend, partitions: Sequence[Partition], owner: str, ttl: float
) -> list[bool]:
    """Take the leases of ``partitions`` that nobody holds, in one pipeline (one round trip
    per node on Redis Cluster); per partition, whether it is ours now."""
    if not partitions:
        return []
    with backend.commands("drain lease acquire") as client:
        pipe = client.pipeline(transaction=False)
        for partition in partitions:
            pipe.set(partition.lease, owner, nx=True, px=max(int(ttl * 1000), 1))
        return [bool(taken) for taken in pipe.execute()]


def renew_leases(
    backend: RedisBackend, partitions: Sequence[Partition], owner: str, ttl: float
) -> list[bool]:
    """Extend our leases of ``partitions`` in one pipeline (one round trip per node on
    Redis Cluster); per partition, False if its lease is no longer ours."""
    args = ["renew", owner, max(int(ttl * 1000), 1)]
    calls = [([p.lease], args) for p in partitions]
    return [
        bool(r) for r in backend.run_script_many("drain_lease", calls, what="drain lease renew")
    ]
