"""A cache namespace for asyncio code, on the keys and scripts of the sync cache.

:class:`AsyncCache` reads and writes the copies :class:`~taskguard.CacheService` does
(same keys, same ``cache_read``/``cache_flight``/``cache_fill``/``cache_wb_write``
scripts, same entry format and codec), so a FastAPI service and Celery tasks share one
cache namespace, its single-flight locks and its write-behind queue included. Two
strategies: cache-aside (no store), and write-behind (a store the drain pool writes; its
writes are :mod:`taskguard.aio.writebehind`). Write-through and write-around write the
store on every call and are left to ``CacheService`` (docs/asyncio.md says why).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from taskguard.cache import outage
from taskguard.cache.calls import CacheCalls, Lookup
from taskguard.cache.codec import get_codec
from taskguard.cache.config import CacheConfig, CacheOptions
from taskguard.cache.entry import encode, header
from taskguard.cache.replication import check_replication, on_cluster
from taskguard.cache.values import ValueCheck
from taskguard.cache.xfetch import should_refresh_early
from taskguard.errors import BackendUnavailable, ConfigurationError
from taskguard.sinks.base import Loaded

from .base import AsyncBackend
from .redis import AsyncRedisBackend
from .writebehind import AsyncSettler, AsyncWriteBehind

__all__ = ["AsyncCache"]

logger = logging.getLogger("taskguard.cache")

Loader = Callable[[], Awaitable[Any]]

_HEADER = header()
# The single-flight poll of taskguard.cache.flight: doubling from 2 ms to 50 ms.
_FIRST_POLL = 0.002
_MAX_POLL = 0.05


class AsyncCache:
    """A cache namespace: ``taskguard.aio.connect(url).cache(namespace, ttl=...)``.

    Args:
        backend: An asyncio Redis backend (a memory one is refused, as by the sync cache).
        namespace: The namespace, ``[A-Za-z0-9_.-]+``, shared with sync caches of the name.
        options: The TTL and the rest (:class:`~taskguard.cache.CacheOptions`); the
            strategy is ``"cache-aside"`` (a store, if any, is read through on a miss)
            or ``"write-behind"`` (with a store).
        rng: Randomness for TTL jitter and early refresh (injectable for tests).

    Raises:
        ConfigurationError: An invalid option, write-through or write-around, or a
            backend that is not Redis.
    """

    def __init__(
        self,
        backend: AsyncBackend,
        namespace: str,
        options: CacheOptions,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if options.strategy not in ("cache-aside", "write-behind"):
            raise ConfigurationError(
                "the asyncio cache is cache-aside or write-behind; use the sync "
                "CacheService for write-through and write-around (docs/asyncio.md)",
                field="strategy",
            )
        self.config = CacheConfig.create(namespace, options)
        if not isinstance(backend, AsyncRedisBackend):
            raise ConfigurationError(
                f"the cache needs a Redis backend (taskguard.aio.connect('redis://...')), "
                f"not {type(backend).__name__}",
                field="backend",
            )
        self.backend = backend
        if self.config.replicas:
            check_replication(
                self.config,
                cluster=on_cluster(backend.url, backend.client),
                socket_timeout=backend.socket_timeout,
            )
        self._codec = get_codec(self.config.codec)
        self._rng = rng or random.Random()
        store = self.config.store
        # cache-aside writes no store, so the store's limits do not apply to its set().
        self._check = ValueCheck(
            namespace, self._codec, store if self.config.write_behind else None
        )
        self._calls = CacheCalls(
            backend.keys,
            namespace,
            self.config.partitions,
            self._codec,
            queued=self.config.write_behind,
        )
        self._settler = AsyncSettler(backend, self._calls)
        self._writer: AsyncWriteBehind | None = None
        if self.config.write_behind and store is not None:  # CacheConfig requires the store
            self._writer = AsyncWriteBehind(
                self.config, self._settler, store, self.ttl_ms, sender=self
            )

    def __repr__(self) -> str:
        return f"AsyncCache({self.namespace!r}, ttl={self.config.ttl!r})"

    @property
    def namespace(self) -> str:
        """The namespace."""
        return self.config.namespace

    def ttl_ms(self, *, negative: bool = False) -> int:
        """A TTL for one cached copy, with jitter (see ``CacheService.ttl_ms``)."""
        base = self.config.negative_ttl if negative else self.config.ttl
        return max(int(base * 1000 * (1 + self._rng.uniform(0, self.config.jitter))), 1)

    # ------------------------------------------------------------------ reads

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``: the cached copy; in a write-behind
        namespace then the queued write; then the store if there is one (caching its
        row). While Redis is down, the store's row (without a store, ``default``)."""
        return (await self.get_many([key])).get(key, default)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of ``keys`` that have one (one pipelined round trip to Redis, and
        one ``load_many`` of the store, if any, in a worker thread, for the misses)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        unsettled = await self._settler.unsettled(wanted)
        if unsettled:  # written straight to the store; Redis may hold older copies
            found.update(await self._from_store(list(unsettled), fill=False))
            wanted = [key for key in wanted if key not in unsettled]
        calls = [(self._calls.read_keys(key), [key]) for key in wanted]
        try:
            replies = await self.backend.run_script_many(
                "cache_read", calls, what="cache read_many"
            )
        except BackendUnavailable as exc:
            self._degraded("get_many", exc)
            found.update(await self._from_store(wanted, fill=False))
            return found
        misses = []
        for key, lookup in zip(wanted, map(self._calls.lookup, replies), strict=True):
            if lookup.kind == "miss":
                misses.append(key)
            elif lookup.found:
                found[key] = lookup.value
        found.update(await self._from_store(misses))
        return found

    async def _from_store(self, keys: list[str], *, fill: bool = True) -> dict[str, Any]:
        """Values of ``keys`` from the store (none without one; tombstones left out),
        cached unless a copy or a queued write appeared meanwhile."""
        store = self.config.store
        if store is None or not keys:
            return {}
        rows: Mapping[str, Loaded] = await asyncio.to_thread(store.load_many, self.namespace, keys)
        values = {k: row.value for k, row in rows.items() if not row.deleted}
        if fill:
            copies = [(k, *self._copy(values.get(k), 0.0)) for k in keys]
            calls = [
                (
                    self._calls.fill_keys(k),
                    self._calls.fill_args(k, cached, ttl, only_if_absent=True, token=""),
                )
                for k, cached, ttl in copies
                if cached
            ]
            try:
                await self.backend.run_script_many("cache_fill", calls, what="cache fill_many")
            except BackendUnavailable as exc:
                self._degraded("caching store rows", exc)
        return values

    async def get_or_load(self, key: str, loader: Loader) -> Any:
        """The value of ``key``, loading it with ``await loader()`` on a miss.

        Stampede-safe across both APIs: on a miss one caller in the fleet takes the key's
        single-flight lock and loads, the others (sync or asyncio) wait for its copy; a
        hot key is refreshed early by one caller (XFetch). A loader returning None is
        cached as a negative entry for ``negative_ttl``. While Redis is down the loader
        is awaited directly. In a write-behind namespace a queued write wins, and a
        loaded value is never cached over a queued one (the store is not consulted: the
        loader is the source).
        """
        if await self._settler.unsettled([key]):
            return await loader()
        try:
            lookup = await self._read(key)
            if lookup.kind == "miss":
                return await self._load(key, loader)
            if lookup.found and should_refresh_early(
                lookup.delta, lookup.remaining, self.config.early_refresh, self._rng.random
            ):
                return await self._refresh(key, lookup, loader)
        except BackendUnavailable as exc:
            self._degraded("get_or_load", exc)
            return await loader()
        return lookup.value if lookup.found else None

    # ------------------------------------------------------------------ writes

    async def set(self, key: str, value: Any) -> None:
        """Write ``key`` (``value`` must not be None: use :meth:`delete`).

        cache-aside: the cached copy. write-behind: the cached copy and the queue in one
        script call, as ``CacheService.set``; the drain pool writes the store later. A
        full queue follows ``on_full``; while Redis is down the write goes straight to
        the store (in a worker thread).

        Raises:
            UnstorableValue: ``value`` would not read back equal through the codec, or
                the store can never hold it; nothing was written.
            WriteBehindFull: The queue is full and ``on_full`` is ``"raise"``/``"block"``.
            StoreError: write-behind, and Redis and the store both failed.
            BackendUnavailable: cache-aside, and Redis is down (nowhere else to go).
        """
        await self.set_many({key: value})

    async def set_many(self, mapping: Mapping[str, Any]) -> None:
        """:meth:`set` every item, pipelined (write-behind: not atomic as a whole); every
        item is checked before any is written."""
        items = dict(mapping)
        for key, value in items.items():
            if value is None:
                raise ValueError(f"cannot cache None for {key!r}: use delete()")
        payloads = {k: self._check.payload(k, v) for k, v in items.items()}
        if self._writer is not None and payloads:
            await self._settler.unsettled(())  # retry pending settles first
            await self._writer.write_many([(k, items[k], p) for k, p in payloads.items()])
            return
        copies = [(k, _HEADER + payload) for k, payload in payloads.items()]
        if not copies:
            return
        async with self.backend.commands("cache SET") as client:
            pipe = client.pipeline(transaction=False)
            for key, cached in copies:
                pipe.set(self._calls.value_key(key), cached, px=self.ttl_ms())
            await pipe.execute()

    async def delete(self, key: str) -> None:
        """Delete ``key``: write-behind queues a tombstone for the store (and drops the
        cached copy in the same call); cache-aside drops the cached copy.

        Raises:
            UnstorableValue: The store can never hold ``key``; nothing was written.
            BackendUnavailable: cache-aside, and Redis is down.
        """
        self._check.deletion(key)
        if self._writer is not None:
            await self._settler.unsettled(())
            await self._writer.write_many([(key, None, None)])
            return
        await self.invalidate(key)

    async def invalidate(self, key: str) -> None:
        """Drop ``key``'s cached copy (the store and any queued write are untouched).

        Raises:
            BackendUnavailable: Redis is down.
        """
        async with self.backend.commands("cache DEL") as client:
            await client.delete(self._calls.value_key(key))

    # ------------------------------------------------------------------ single flight

    async def _read(self, key: str) -> Lookup:
        keys = self._calls.read_keys(key)
        reply = await self.backend.run_script("cache_read", keys, [key], what="cache read")
        return self._calls.lookup(reply)

    async def _flight(self, key: str, token: str, force: bool) -> tuple[bool, Lookup]:
        ttl_ms = max(int(self.config.flight_ttl * 1000), 1)
        keys, args = self._calls.flight_call(key, token, ttl_ms, force=force)
        reply = await self.backend.run_script("cache_flight", keys, args, what="cache flight")
        return self._calls.flight_result(reply)

    async def _load(self, key: str, loader: Loader) -> Any:
        """As ``SingleFlight.load``: one loader per missing key, the others poll."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.config.flight_wait
        delay = _FIRST_POLL
        while True:
            mine, lookup = await self._flight(key, token, force=False)
            if mine:
                return await self._load_and_cache(key, loader, token, only_if_absent=True)
            if lookup.kind == "cached":
                return lookup.value
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, _MAX_POLL)
        logger.warning(
            "cache %s: waited %.2fs for another caller to load %r; loading it here",
            self.namespace,
            self.config.flight_wait,
            key,
        )
        return await self._load_and_cache(key, loader, "", only_if_absent=True)

    async def _refresh(self, key: str, lookup: Lookup, loader: Loader) -> Any:
        """An early refresh, by the caller that wins the flight lock (the others keep the
        cached value)."""
        token = uuid.uuid4().hex
        mine, _ = await self._flight(key, token, force=True)
        if not mine:
            return lookup.value
        return await self._load_and_cache(key, loader, token, only_if_absent=False)

    async def _load_and_cache(
        self, key: str, loader: Loader, token: str, *, only_if_absent: bool
    ) -> Any:
        started = time.monotonic()
        try:
            value = await loader()
        except BaseException:
            if token:
                await self._fill(key, b"", 1, only_if_absent=True, token=token)
            raise
        cached, ttl_ms = self._copy(value, time.monotonic() - started)
        await self._fill(key, cached, ttl_ms, only_if_absent=only_if_absent, token=token)
        return value

    async def _fill(
        self, key: str, cached: bytes, ttl_ms: int, *, only_if_absent: bool, token: str
    ) -> None:
        # The value is loaded: a Redis failure now only costs the cached copy.
        args = self._calls.fill_args(
            key, cached, ttl_ms, only_if_absent=only_if_absent, token=token
        )
        try:
            await self.backend.run_script(
                "cache_fill", self._calls.fill_keys(key), args, what="cache fill"
            )
        except BackendUnavailable as exc:
            outage.warn("cache %s: could not cache %r: %s", self.namespace, key, exc)

    def _copy(self, value: Any, delta: float) -> tuple[bytes, int]:
        """The cached copy of a loaded value and its TTL (``b""``: cache nothing)."""
        if value is None:
            if self.config.negative_ttl <= 0:
                return b"", 1
            return encode(self._codec, None, delta), self.ttl_ms(negative=True)
        return encode(self._codec, value, delta), self.ttl_ms()

    def _degraded(self, what: str, exc: BackendUnavailable) -> None:
        outage.warn("cache %s: Redis unavailable during %s: %s", self.namespace, what, exc)
