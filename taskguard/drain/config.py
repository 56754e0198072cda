"""The ``drain`` settings section: when a Celery worker runs a drain pool, and how.

Read from ``app.conf.taskguard["drain"]`` and validated when the worker starts; a bad value
raises :class:`~taskguard.errors.ConfigurationError` naming the field (``"drain.workers"``).
This module imports nothing heavy, so :mod:`taskguard.settings` can use it freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskguard._validate import count, flag, seconds, text
from taskguard.cache.config import check_namespace
from taskguard.errors import ConfigurationError
from taskguard.urls import redact

__all__ = ["DrainOptions", "DrainSettings"]

_DURATIONS = ("linger", "lease_ttl", "claim_idle", "backoff_base", "backoff_max", "stop_timeout")
_COUNTS = {"workers": 1, "batch_size": 1, "max_deliveries": 1}
_FIELDS = frozenset({"enabled", "store", "table", "namespaces", *_DURATIONS, *_COUNTS})


@dataclass(frozen=True)
class DrainOptions:
    """The tunables of a drain pool (see :class:`taskguard.drain.DrainPool`)."""

    batch_size: int = 2000
    linger: float = 0.05
    lease_ttl: float = 10.0
    max_deliveries: int = 5
    claim_idle: float = 30.0
    backoff_base: float = 0.1
    backoff_max: float = 30.0


@dataclass(frozen=True, kw_only=True)
class DrainSettings:
    """How a worker's drain pool runs (see :class:`taskguard.drain.DrainPool`).

    Attributes:
        enabled: Run a drain pool inside the worker (in the parent process, after the
            pool forks).
        store: The store URL (``postgresql://...``, ``sqlite:///path.db``, or a scheme
            registered with :func:`taskguard.sinks.register_store`).
        table: The store's table, passed to the store's factory as ``table=`` (None: the
            store's default, ``taskguard_kv`` for SQLStore).
        namespaces: The namespaces to drain; empty means every registered namespace.
        workers: Drain threads.
        batch_size: Most records read from one partition per batch.
        linger: Seconds to wait for a batch to fill.
        lease_ttl: Seconds a partition lease lives without renewal.
        max_deliveries: Deliveries after which a record is dead-lettered.
        claim_idle: Seconds before another consumer's unacknowledged records are claimed.
        backoff_base: First retry delay after a transient store error.
        backoff_max: Longest retry delay.
        stop_timeout: Seconds the worker's shutdown waits for the in-flight batch.
    """

    enabled: bool = False
    store: str | None = None
    table: str | None = None
    namespaces: tuple[str, ...] = ()
    workers: int = 2
    batch_size: int = DrainOptions.batch_size
    linger: float = DrainOptions.linger
    lease_ttl: float = DrainOptions.lease_ttl
    max_deliveries: int = DrainOptions.max_deliveries
    claim_idle: float = DrainOptions.claim_idle
    backoff_base: float = DrainOptions.backoff_base
    backoff_max: float = DrainOptions.backoff_max
    stop_timeout: float = 10.0

    @classmethod
    def from_mapping(cls, raw: object) -> DrainSettings:
        """Validate the ``drain`` section.

        Raises:
            ConfigurationError: Naming the field, e.g. ``drain.batch_size``.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"must be a mapping, got {raw!r}", field="drain")
        unknown = sorted(set(raw) - _FIELDS)
        if unknown:
            raise ConfigurationError(
                f"unknown setting; known: {', '.join(sorted(_FIELDS))}",
                field=f"drain.{unknown[0]}",
            )
        values: dict[str, Any] = {}
        checks = (
            ("enabled", _enabled),
            ("store", _store),
            ("table", _table),
            ("namespaces", _namespaces),
        )
        for name, check in checks:
            if raw.get(name) is not None:
                values[name] = check(raw[name])
        for name, minimum in _COUNTS.items():
            if name in raw:
                values[name] = count(raw[name], f"drain.{name}", minimum)
        for name in _DURATIONS:
            if name in raw:
                zero_ok = name == "linger"
                values[name] = seconds(raw[name], f"drain.{name}", allow_zero=zero_ok)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field checks.

        Raises:
            ConfigurationError: Naming the field at fault.
        """
        if self.enabled and not self.store:
            raise ConfigurationError(
                "a drain pool needs a store URL (drain.store) when drain.enabled is true",
                field="drain.store",
            )
        if self.backoff_max < self.backoff_base:
            raise ConfigurationError(
                f"must be at least backoff_base ({self.backoff_base}s), got {self.backoff_max}",
                field="drain.backoff_max",
            )
        if self.linger >= self.lease_ttl / 3:
            raise ConfigurationError(
                f"must be under a third of lease_ttl ({self.lease_ttl}s), got {self.linger}",
                field="drain.linger",
            )


def _enabled(value: object) -> bool:
    return flag(value, "drain.enabled")


def _store(value: object) -> str:
    if not isinstance(value, str) or "://" not in value:
        shown = redact(value) if isinstance(value, str) else value
        raise ConfigurationError(
            f"must be a database URL such as postgresql://... or sqlite:///x.db, got {shown!r}",
            field="drain.store",
        )
    return value


def _table(value: object) -> str:
    return text(value, "drain.table")


def _namespaces(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(item, str) and item for item in items
    ):
        raise ConfigurationError(
            f"must be a list of namespace names, got {value!r}", field="drain.namespaces"
        )
    return tuple(check_namespace(item, "drain.namespaces") for item in items)
