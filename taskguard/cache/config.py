"""A cache namespace's settings: one frozen, validated value object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from taskguard.errors import ConfigurationError
from taskguard.sinks.base import Store
from taskguard.units import parse_duration

from .codec import get_codec

__all__ = ["ON_FULL", "STRATEGIES", "WRITE_STRATEGIES", "CacheConfig"]

#: Cache strategies (see docs/caching.md).
STRATEGIES = ("cache-aside", "write-through", "write-around", "write-behind")
#: Strategies that write the store, and so need one.
WRITE_STRATEGIES = ("write-through", "write-around", "write-behind")
#: What a write-behind write does when its partition's queue is full.
ON_FULL = ("write_through", "raise", "block")
#: Negative entries live at most this long unless ``negative_ttl`` says otherwise.
DEFAULT_NEGATIVE_TTL = 30.0

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+")


def _seconds(value: object, field: str, *, allow_zero: bool = False) -> float:
    try:
        return parse_duration(value, allow_zero=allow_zero)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigurationError(str(exc), field=field) from None


def _choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigurationError(f"must be one of {', '.join(choices)}, got {value!r}", field=field)
    return str(value)


def _number(value: object, field: str, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"must be a number, got {value!r}", field=field)
    if not low <= value <= (high if high is not None else float("inf")):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(f"must be {bound}, got {value!r}", field=field)
    return float(value)


def _count(value: object, field: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"must be an integer >= {low}, got {value!r}", field=field)
    return value


@dataclass(frozen=True)
class CacheConfig:
    """The validated settings of one cache namespace.

    Build it with :meth:`create`; every invalid value raises :class:`ConfigurationError`
    naming its field. See :class:`taskguard.cache.CacheService` for the meaning of each.
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

    @property
    def write_behind(self) -> bool:
        """True for the write-behind strategy."""
        return self.strategy == "write-behind"

    @classmethod
    def create(
        cls,
        namespace: str,
        *,
        ttl: float | timedelta | None,
        strategy: str = "cache-aside",
        store: Store | None = None,
        partitions: int = 8,
        codec: str = "json",
        jitter: float = 0.1,
        negative_ttl: float | timedelta | None = None,
        capacity: int | None = None,
        on_full: str = "write_through",
        block_timeout: float | timedelta = 5.0,
        early_refresh: float = 1.0,
        flight_ttl: float | timedelta = 10.0,
        flight_wait: float | timedelta = 5.0,
    ) -> CacheConfig:
        """Validate the settings (each argument as in :class:`CacheService`)."""
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigurationError(
                f"must match [A-Za-z0-9_.-]+, got {namespace!r}", field="namespace"
            )
        if ttl is None:
            raise ConfigurationError("a TTL is mandatory (seconds or a timedelta)", field="ttl")
        seconds = _seconds(ttl, "ttl")
        strategy = _choice(strategy, "strategy", STRATEGIES)
        if store is not None and not isinstance(store, Store):
            raise ConfigurationError(
                f"must implement taskguard.sinks.Store, got {type(store).__name__}", field="store"
            )
        if strategy in WRITE_STRATEGIES and store is None:
            raise ConfigurationError(f"strategy {strategy!r} needs a store", field="store")
        if not isinstance(codec, str):
            raise ConfigurationError(
                f"must be a codec name ('json' or 'msgpack'), got {codec!r}", field="codec"
            )
        get_codec(codec)  # raises for an unknown codec (and for pickle)
        negative = (
            min(seconds, DEFAULT_NEGATIVE_TTL)
            if negative_ttl is None
            else _seconds(negative_ttl, "negative_ttl", allow_zero=True)
        )
        return cls(
            namespace=namespace,
            ttl=seconds,
            strategy=strategy,
            store=store,
            partitions=_count(partitions, "partitions", 1),
            codec=codec,
            jitter=_number(jitter, "jitter", 0.0, 1.0),
            negative_ttl=negative,
            capacity=0 if capacity is None else _count(capacity, "capacity", 1),
            on_full=_choice(on_full, "on_full", ON_FULL),
            block_timeout=_seconds(block_timeout, "block_timeout", allow_zero=True),
            early_refresh=_number(early_refresh, "early_refresh", 0.0),
            flight_ttl=_seconds(flight_ttl, "flight_ttl"),
            flight_wait=_seconds(flight_wait, "flight_wait", allow_zero=True),
        )

    def summary(self) -> dict[str, Any]:
        """The settings as a dict (for logs and reprs), without the store object."""
        return {
            "namespace": self.namespace,
            "strategy": self.strategy,
            "ttl": self.ttl,
            "partitions": self.partitions,
            "codec": self.codec,
        }
