"""Stores by URL scheme: ``store_from_url("sqlite:///app.db")`` builds the right store.

A scheme maps to a factory called as ``factory(url, **options)``. :class:`SQLStore` is
registered for the schemes it accepts, through a factory that imports it (and SQLAlchemy)
only when called, so the core install needs no SQLAlchemy. Register your own store with
:func:`register_store`; the drain settings (``drain.store``), ``taskguard drain --store``
and the demo all build their stores here.

Example:
    >>> "sqlite" in registered_schemes()
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskguard.errors import ConfigurationError
from taskguard.urls import redact

from .base import Store

__all__ = ["StoreFactory", "register_store", "registered_schemes", "store_from_url"]

#: Builds a store from its URL and keyword options.
StoreFactory = Callable[..., Store]

_FACTORIES: dict[str, StoreFactory] = {}


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Build stores for URLs ``<scheme>://...`` with ``factory(url, **options)``.

    Registering a scheme again replaces its factory.

    Args:
        scheme: The URL scheme, e.g. ``"postgresql"`` or ``"postgresql+psycopg"``
            (compared in lower case).
        factory: Called with the whole URL and the options given to
            :func:`store_from_url`; returns a :class:`~taskguard.sinks.base.Store`.
    """
    if not isinstance(scheme, str) or not scheme or "://" in scheme:
        raise ValueError(f"a store scheme is a non-empty name without '://', got {scheme!r}")
    _FACTORIES[scheme.lower()] = factory


def registered_schemes() -> tuple[str, ...]:
    """The registered URL schemes, sorted."""
    return tuple(sorted(_FACTORIES))


def store_from_url(url: str, **options: Any) -> Store:
    """The store for ``url``, built by the factory registered for its scheme.

    Args:
        url: ``<scheme>://...``, e.g. ``"postgresql://app@db/app"``, ``"sqlite:///app.db"``.
        **options: Passed to the factory (for SQLStore: ``table``, ``create``...).

    Raises:
        ConfigurationError: No factory is registered for the URL's scheme (the message
            lists the registered ones); or the factory refused the URL or options.
    """
    scheme, separator, _ = url.partition("://")
    factory = _FACTORIES.get(scheme.lower()) if separator else None
    if factory is None:
        raise ConfigurationError(
            f"no store is registered for {redact(url)!r}; registered schemes: "
            f"{', '.join(registered_schemes())} (add one with register_store)",
            field="url",
        )
    return factory(url, **options)


def _sql_store(url: str, **options: Any) -> Store:
    from taskguard.sinks import SQLStore  # explains the missing extra if SQLAlchemy is absent

    return SQLStore(url, **options)


# What SQLStore accepts: PostgreSQL through psycopg 3 (plain "postgresql" picks it), and
# SQLite (a file, or "sqlite://" in memory).
for _scheme in ("postgresql", "postgres", "postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
    register_store(_scheme, _sql_store)
