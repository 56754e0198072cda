"""A cache namespace's settings: one frozen, validated value object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from taskguard._validate import choice, count, number, seconds
from taskguard.errors import ConfigurationError
from taskguard.sinks.base import Store

from .codec import get_codec
from .records import MAX_PARTITIONS

__all__ = [
    "MAX_NAMESPACE_LENGTH",
    "ON_FULL",
    "STRATEGIES",
    "WRITE_STRATEGIES",
    "CacheConfig",
    "CacheOptions",
    "check_namespace",
    "check_partitions",
]

#: Cache strategies (see docs/caching.md).
STRATEGIES = ("cache-aside", "write-through", "write-around", "write-behind")
#: Strategies that write the store, and so need one.
WRITE_STRATEGIES = ("write-through", "write-around", "write-behind")
#: What a write-behind write does when its partition's queue is full.
ON_FULL = ("write_through", "raise", "block")
#: Seconds a write-behind write waits for its replicas by default (``replica_timeout``).
DEFAULT_REPLICA_TIMEOUT = 0.1
#: Negative entries live at most this long unless ``negative_ttl`` says otherwise.
DEFAULT_NEGATIVE_TTL = 30.0

#: The longest namespace name. It is part of every key of the namespace, and of the
#: store's primary key (with the cache key: see ``SQLStore.max_key_bytes``).
MAX_NAMESPACE_LENGTH = 64

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+")


def check_namespace(value: object, field: str = "namespace") -> str:
    """``value`` if it is a valid namespace name (``[A-Za-z0-9_.-]``, 1 to
    :data:`MAX_NAMESPACE_LENGTH` characters), else a ConfigurationError naming ``field``."""
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        raise ConfigurationError(f"must match [A-Za-z0-9_.-]+, got {value!r}", field=field)
    if len(value) > MAX_NAMESPACE_LENGTH:
        raise ConfigurationError(
            f"must be at most {MAX_NAMESPACE_LENGTH} characters, got {len(value)}", field=field
        )
    return value


def check_partitions(value: object) -> int:
    """``value`` if it is a partition count from 1 to :data:`MAX_PARTITIONS`."""
    partitions = count(value, "partitions")
    if partitions > MAX_PARTITIONS:
        raise ConfigurationError(
            f"must be at most {MAX_PARTITIONS}, got {partitions}", field="partitions"
        )
    return partitions


@dataclass(frozen=True, kw_only=True)
class CacheOptions:
    """The options of a cache namespace as given: each one and its default declared here.

    ``taskguard.connect(url).cache(namespace, **options)`` passes its keyword arguments
    through to this class; :meth:`CacheConfig.create` validates them.

    Attributes:
        ttl: Seconds (or a timedelta) a cached copy lives. Mandatory (None is refused).
        strategy: ``"cache-aside"`` (default), ``"write-through"``, ``"write-around"`` or
            ``"write-behind"``.
        store: The database (:class:`taskguard.sinks.Store`). Required by the write
            strategies; with cache-aside, ``get()`` reads through it on a miss.
        partitions: Keys are spread over this many partitions (``crc32(key) mod P``), each
            with its own Redis Cluster hash tag and, for write-behind, its own queue.
            1 to 1024 (:data:`~taskguard.cache.records.MAX_PARTITIONS`).
        codec: ``"json"`` (default) or ``"msgpack"``. Pickle is never used.
        jitter: Each cached copy lives ``ttl * (1 + uniform(0, jitter))``, so keys cached
            together do not all expire together. 0 to 1.
        negative_ttl: Seconds a "no value" entry lives (the loader returned None or the
            store had no row); default ``min(ttl, 30)``; 0 disables negative caching.
        capacity: Write-behind: entries a partition's queue may hold (None: unbounded).
        on_full: Write-behind, queue at capacity: ``"write_through"`` (write the store
            directly), ``"raise"`` (:class:`~taskguard.errors.WriteBehindFull`) or
            ``"block"`` (wait up to ``block_timeout``, then raise).
        block_timeout: Seconds ``on_full="block"`` waits for room.
        early_refresh: XFetch's beta for ``get_or_load``: larger refreshes hot keys earlier;
            0 disables early refresh.
        flight_ttl: Seconds a single-flight lock lives if its holder dies while loading.
        flight_wait: Seconds a caller waits for another's load before loading itself.
        replicas: Write-behind: each write is followed, in the same round trip, by
            ``WAIT <replicas> <replica_timeout in ms>``; a write fewer replicas
            acknowledged goes straight to the store too, as during an outage
            (docs/outages.md). 0 (default): no ``WAIT``. Not on Redis Cluster.
        replica_timeout: Seconds ``WAIT`` waits for the replicas (at least 1 ms, and less
            than the backend's ``socket_timeout``).
    """

    ttl: float | timedelta | None = None
    strategy: str = "cache-aside"
    store: Store | None = None
    partitions: int = 8
    codec: str = "json"
    jitter: float = 0.1
    negative_ttl: float | timedelta | None = None
    capacity: int | None = None
    on_full: str = "write_through"
    block_timeout: float | timedelta = 5.0
    early_refresh: float = 1.0
    flight_ttl: float | timedelta = 10.0
    flight_wait: float | timedelta = 5.0
    replicas: int = 0
    replica_timeout: float | timedelta = DEFAULT_REPLICA_TIMEOUT


@dataclass(frozen=True)
class CacheConfig:
    """The validated settings of one cache namespace, in seconds and counts.

    Build it with :meth:`create`; every invalid value raises :class:`ConfigurationError`
    naming its field. :class:`CacheOptions` has the meaning and default of each.
    """

    namespace: str
    ttl: float
    strategy: str
    store: Store | None
    partitions: int
    codec: str
    jitter: float
    negative_ttl: float
    capacity: int
    on_full: str
    block_timeout: float
    early_refresh: float
    flight_ttl: float
    flight_wait: float
    replicas: int = 0
    replica_timeout: float = DEFAULT_REPLICA_TIMEOUT

    @property
    def write_behind(self) -> bool:
        """True for the write-behind strategy."""
        return self.strategy == "write-behind"

    @classmethod
    def create(cls, namespace: str, options: CacheOptions) -> CacheConfig:
        """Validate ``options`` for ``namespace``."""
        namespace = check_namespace(namespace)
        if options.ttl is None:
            raise ConfigurationError("a TTL is mandatory (seconds or a timedelta)", field="ttl")
        ttl = seconds(options.ttl, "ttl")
        strategy = choice(options.strategy, "strategy", STRATEGIES)
        store = options.store
        if store is not None and not isinstance(store, Store):
            raise ConfigurationError(
                f"must implement taskguard.sinks.Store, got {type(store).__name__}", field="store"
            )
        if strategy in WRITE_STRATEGIES and store is None:
            raise ConfigurationError(f"strategy {strategy!r} needs a store", field="store")
        codec = options.codec
        if not isinstance(codec, str):
            raise ConfigurationError(
                f"must be a codec name ('json' or 'msgpack'), got {codec!r}", field="codec"
            )
        get_codec(codec)  # raises for an unknown codec (and for pickle)
        negative = (
            min(ttl, DEFAULT_NEGATIVE_TTL)
            if options.negative_ttl is None
            else seconds(options.negative_ttl, "negative_ttl", allow_zero=True)
        )
        capacity = options.capacity
        replicas = count(options.replicas, "replicas", minimum=0)
        if replicas and strategy != "write-behind":
            raise ConfigurationError(
                f"applies to write-behind writes only, not to strategy {strategy!r}",
                field="replicas",
            )
        replica_timeout = seconds(options.replica_timeout, "replica_timeout")
        if replica_timeout < 0.001:
            raise ConfigurationError(
                f"must be at least 0.001 s (WAIT counts milliseconds), got {replica_timeout!r}",
                field="replica_timeout",
            )
        return cls(
            namespace=namespace,
            ttl=ttl,
            strategy=strategy,
            store=store,
            partitions=check_partitions(options.partitions),
            codec=codec,
            jitter=number(options.jitter, "jitter", 0.0, 1.0),
            negative_ttl=negative,
            capacity=0 if capacity is None else count(capacity, "capacity"),
            on_full=choice(options.on_full, "on_full", ON_FULL),
            block_timeout=seconds(options.block_timeout, "block_timeout", allow_zero=True),
            early_refresh=number(options.early_refresh, "early_refresh", 0.0),
            flight_ttl=seconds(options.flight_ttl, "flight_ttl"),
            flight_wait=seconds(options.flight_wait, "flight_wait", allow_zero=True),
            replicas=replicas,
            replica_timeout=replica_timeout,
        )

    @property
    def replica_timeout_ms(self) -> int:
        """``replica_timeout`` in whole milliseconds, as ``WAIT`` takes it."""
        return max(round(self.replica_timeout * 1000), 1)

    def summary(self) -> dict[str, Any]:
        """The settings as a dict (for logs and reprs), without the store object."""
        return {
            "namespace": self.namespace,
            "strategy": self.strategy,
            "ttl": self.ttl,
            "partitions": self.partitions,
            "codec": self.codec,
        }
