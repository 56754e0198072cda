"""The cache service: one namespace, one strategy, one TTL.

Reads go to Redis first. For write-behind they then consult the write queue (the newest
write may not be in the store yet); only then the store. Writes follow the namespace's
strategy (docs/caching.md has the guarantees of each). While Redis is down, reads fall back
to the store (or the loader) and writes to the store; cache-aside writes raise
:class:`~taskguard.errors.BackendUnavailable`, since they have nowhere else to go.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from taskguard.backend.base import Backend
from taskguard.backend.redis import HasBackend, require_redis
from taskguard.errors import BackendUnavailable, ConfigurationError
from taskguard.sinks.base import Loaded, Record, Store

from . import outage
from .codec import get_codec
from .config import CacheConfig, CacheOptions
from .entry import encode, header
from .flight import SingleFlight
from .ops import CacheOps
from .records import local_version
from .replication import check_replication, on_cluster
from .settling import Settler
from .values import ValueCheck
from .writebehind import WriteBehind

__all__ = ["CacheService"]

logger = logging.getLogger("taskguard.cache")

_HEADER = header()


class CacheService:
    """A cache namespace in Redis with a strategy for keeping it and a store in step.

    Build one with ``backend.cache(namespace, ttl=..., ...)``.

    Args:
        backend: A Redis backend (``taskguard.connect("redis://...")``); the cache needs
            Redis, a memory backend is refused.
        namespace: The namespace, ``[A-Za-z0-9_.-]+``; its keys are separate from every
            other namespace's, and the store keeps its rows under this name.
        options: The TTL, strategy, store and the rest (:class:`CacheOptions` declares
            each, with its default).
        rng: Randomness for TTL jitter and early refresh (injectable for tests).

    Raises:
        ConfigurationError: A setting is invalid (the error names it), the backend is not
            Redis, or a write-behind namespace is registered with other partitions.

    Example:
        >>> import taskguard
        >>> users = taskguard.connect().cache("users", ttl=300)  # doctest: +SKIP
        >>> users.get_or_load("42", lambda: {"name": "Ada"})  # doctest: +SKIP
        {'name': 'Ada'}
    """

    def __init__(
        self,
        backend: Backend | HasBackend,
        namespace: str,
        options: CacheOptions,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = CacheConfig.create(namespace, options)
        self.backend = require_redis(backend, "cache")
        if self.config.replicas:
            check_replication(
                self.config,
                cluster=on_cluster(self.backend.url, lambda: self.backend.client),
                socket_timeout=self.backend.socket_timeout,
            )
        self._codec = get_codec(self.config.codec)
        self._rng = rng or random.Random()
        # cache-aside writes no store, so the store's limits do not apply to its set().
        writes_store = self.config.strategy != "cache-aside"
        self._check = ValueCheck(
            namespace, self._codec, self.config.store if writes_store else None
        )
        self._ops = CacheOps(
            self.backend,
            namespace,
            self.config.partitions,
            self._codec,
            queued=self.config.write_behind,
        )
        self._flight = SingleFlight(
            self._ops,
            self._copy,
            flight_ttl=self.config.flight_ttl,
            flight_wait=self.config.flight_wait,
            early_refresh=self.config.early_refresh,
            rng=self._rng,
        )
        self._settler = Settler(self._ops)
        self._writer: WriteBehind | None = None
        store = self.config.store
        if self.config.write_behind and store is not None:  # CacheConfig requires the store
            self._writer = WriteBehind(
                self.config, self._ops, store, self._settler, self.ttl_ms, sender=self
            )
            try:
                self._writer.register()
            except BackendUnavailable as exc:
                logger.warning(
                    "cache %s: registration deferred to the first write: %s", namespace, exc
                )

    def __repr__(self) -> str:
        return (
            f"CacheService({self.namespace!r}, strategy={self.strategy!r}, "
            f"ttl={self.config.ttl!r}, partitions={self.partitions})"
        )

    @property
    def namespace(self) -> str:
        """The namespace."""
        return self.config.namespace

    @property
    def strategy(self) -> str:
        """The strategy."""
        return self.config.strategy

    @property
    def partitions(self) -> int:
        """The partition count."""
        return self.config.partitions

    @property
    def store(self) -> Store | None:
        """The store, if any."""
        return self.config.store

    def ttl_ms(self, *, negative: bool = False) -> int:
        """A TTL for one cached copy, in milliseconds, with jitter: ``ttl * (1 + u)``,
        ``u`` uniform in ``[0, jitter]`` (``negative``: from ``negative_ttl``)."""
        base = self.config.negative_ttl if negative else self.config.ttl
        return max(int(base * 1000 * (1 + self._rng.uniform(0, self.config.jitter))), 1)

    # ------------------------------------------------------------------ reads

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``.

        Looks in the cache, then (write-behind) the queue, then the store if there is one,
        caching what the store returned. A store tombstone or missing row is ``default``.
        A key written straight to the store whose older copy Redis may still hold is read
        from the store (see :mod:`taskguard.cache.settling`).
        """
        if self._unsettled([key]):
            return self._load_from_store([key], fill=False).get(key, default)
        try:
            lookup = self._ops.read(key)
        except BackendUnavailable as exc:
            self._degraded("get", exc)
            return self._load_from_store([key], fill=False).get(key, default)
        if lookup.kind != "miss":
            return lookup.value if lookup.found else default
        return self._load_from_store([key]).get(key, default)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of ``keys`` that have one, by key (one pipelined round trip for the
        cache, one ``load_many`` for the store's share)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        unsettled = self._unsettled(wanted)
        if unsettled:
            found.update(self._load_from_store(list(unsettled), fill=False))
            wanted = [key for key in wanted if key not in unsettled]
        try:
            lookups = self._ops.read_many(wanted)
        except BackendUnavailable as exc:
            self._degraded("get_many", exc)
            found.update(self._load_from_store(wanted, fill=False))
            return found
        misses = []
        for key, lookup in zip(wanted, lookups, strict=True):
            if lookup.kind == "miss":
                misses.append(key)
            elif lookup.found:
                found[key] = lookup.value
        found.update(self._load_from_store(misses))
        return found

    def get_or_load(self, key: str, loader: Callable[[], Any]) -> Any:
        """The value of ``key``, loading it with ``loader()`` on a miss.

        Stampede-safe: on a miss, one caller across the fleet runs the loader while the
        others wait for its result. A hot key is refreshed early, by one caller, with a
        probability that grows near its expiry (XFetch). A loader returning None is cached
        as a negative entry for ``negative_ttl``; this returns None then. The store is not
        consulted (the loader is the source); in a write-behind namespace a queued write
        still wins, and a loaded value is never cached over a queued one. While Redis is
        down (or may hold an older copy of a key written straight to the store) the loader
        is called directly.
        """
        if self._unsettled([key]):
            return loader()
        try:
            lookup = self._ops.read(key)
            if lookup.kind == "miss":
                return self._flight.load(key, loader)
            if lookup.kind == "cached" and lookup.found:
                return self._flight.maybe_refresh(key, lookup, loader)
        except BackendUnavailable as exc:
            self._degraded("get_or_load", exc)
            return loader()
        return lookup.value if lookup.found else None

    # ------------------------------------------------------------------ writes

    def set(self, key: str, value: Any) -> None:
        """Write ``key`` (``value`` must not be None: use :meth:`delete`).

        cache-aside: the cache only. write-through: the store, then the cache.
        write-around: the store, then the cached copy is dropped. write-behind: the cache
        and the queue in one script call; the drain pool writes the store later.

        Raises:
            UnstorableValue: ``value`` would not read back equal through the codec (a
                tuple, a dict with non-string keys, NaN), or the store can never hold the
                key or value (``Store.check``); nothing was written.
            StoreError: The store failed (write-through/around: the cache is untouched;
                write-behind: only when Redis was down too).
            WriteBehindFull: The queue is full and ``on_full`` is ``"raise"``/``"block"``.
            BackendUnavailable: cache-aside only: Redis is down.
        """
        self.set_many({key: value})

    def set_many(self, mapping: Mapping[str, Any]) -> None:
        """:meth:`set` every item: the store in one transaction, the cache pipelined.
        Write-behind queues each item with its own script call (not atomic as a whole).
        Every item is checked before any is written."""
        items = dict(mapping)
        if not items:
            return
        for key, value in items.items():
            if value is None:
                raise ValueError(f"cannot cache None for {key!r}: use delete()")
        payloads = {key: self._check.payload(key, value) for key, value in items.items()}
        self._unsettled(())  # retry pending settles first
        if self._writer is not None:
            self._writer.write_many([(k, items[k], payload) for k, payload in payloads.items()])
            return
        copies = [(k, _HEADER + payload, self.ttl_ms()) for k, payload in payloads.items()]
        if self.strategy == "cache-aside":
            self._ops.put_many(copies)
            return
        records = [Record(k, v, local_version()) for k, v in items.items()]
        self._store_write(records)
        try:
            if self.strategy == "write-through":
                self._ops.put_many(copies)
            else:
                self._ops.invalidate_many(list(items))
        except BackendUnavailable:
            self._settler.settle([(r.key, r.version) for r in records])
        else:
            self._settler.forget(items)

    def delete(self, key: str) -> None:
        """Delete ``key``: a tombstone in the store (write-behind: queued), then the cached
        copy goes. Without a store (cache-aside), only the cached copy.

        Raises:
            UnstorableValue: The store can never hold ``key``; nothing was written.
        """
        self._check.deletion(key)
        self._unsettled(())
        if self._writer is not None:
            self._writer.write(key, None, None)
            return
        if self.store is None:
            self._ops.invalidate_many([key])
            return
        tombstone = Record(key, None, local_version(), deleted=True)
        self._store_write([tombstone])
        try:
            self._ops.invalidate_many([key])
        except BackendUnavailable:
            self._settler.settle([(key, tombstone.version)])
        else:
            self._settler.forget([key])

    def invalidate(self, key: str) -> None:
        """Drop ``key``'s cached copy (the store and any queued write are untouched).

        Raises:
            BackendUnavailable: Redis is down.
        """
        self._ops.invalidate_many([key])

    # ------------------------------------------------------------------ helpers

    def _copy(self, value: Any, delta: float) -> tuple[bytes, int]:
        """The cached copy of a loaded value and its TTL (``b""``: cache nothing)."""
        if value is None:
            if self.config.negative_ttl <= 0:
                return b"", 1
            return encode(self._codec, None, delta), self.ttl_ms(negative=True)
        return encode(self._codec, value, delta), self.ttl_ms()

    def _store_write(self, records: list[Record]) -> None:
        if self.store is None:  # pragma: no cover - the write strategies require a store
            raise ConfigurationError(f"strategy {self.strategy!r} needs a store", field="store")
        self.store.write(self.namespace, records)

    def _load_from_store(self, keys: list[str], *, fill: bool = True) -> dict[str, Any]:
        """Values of ``keys`` from the store (tombstones and missing rows left out),
        cached unless a copy or a queued write appeared meanwhile."""
        if self.store is None or not keys:
            return {}
        if len(keys) == 1:
            row = self.store.load(self.namespace, keys[0])
            rows: Mapping[str, Loaded] = {keys[0]: row} if row is not None else {}
        else:
            rows = self.store.load_many(self.namespace, keys)
        values = {k: row.value for k, row in rows.items() if not row.deleted}
        if fill:
            copies = [(k, *self._copy(values.get(k), 0.0)) for k in keys]
            try:
                self._ops.fill_many([c for c in copies if c[1]])
            except BackendUnavailable as exc:
                self._degraded("caching store rows", exc)
        return values

    def _unsettled(self, keys: Iterable[str]) -> frozenset[str]:
        """Those of ``keys`` whose older copies Redis may still hold, after retrying the
        pending settles (nothing to do, and no cost, when none is pending)."""
        if not self._settler:
            return frozenset()
        self._settler.retry()
        return self._settler.unsettled(keys)

    def _degraded(self, what: str, exc: BackendUnavailable) -> None:
        outage.warn("cache %s: Redis unavailable during %s: %s", self.namespace, what, exc)
