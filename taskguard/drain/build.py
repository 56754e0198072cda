"""A drain pool built from :class:`~taskguard.drain.config.DrainSettings`.

The one path from settings to a running pool, shared by the Celery worker's bootstep and
``taskguard drain``: the store comes from ``settings.store`` through the store registry
(:func:`taskguard.sinks.store_from_url`), and every tunable from the settings.
"""

from __future__ import annotations

from typing import Any

from taskguard.backend.base import Backend
from taskguard.backend.redis import RedisBackend
from taskguard.errors import ConfigurationError
from taskguard.sinks.base import Store
from taskguard.sinks.registry import store_from_url

from .config import DrainSettings
from .pool import DrainPool

__all__ = ["pool_from_settings", "store_from_settings"]


def store_from_settings(settings: DrainSettings) -> Store:
    """The store ``settings.store`` names, with ``settings.table`` if one is set.

    Raises:
        ConfigurationError: Naming ``drain.store``: no URL, an unregistered scheme, or a
            URL the store refused.
    """
    if not settings.store:
        raise ConfigurationError("a store URL is needed", field="drain.store")
    options: dict[str, Any] = {"table": settings.table} if settings.table else {}
    try:
        return store_from_url(settings.store, **options)
    except ConfigurationError as exc:
        raise ConfigurationError(exc.reason, field="drain.store") from exc


def pool_from_settings(
    backend: Backend, settings: DrainSettings, store: Store | None = None
) -> DrainPool:
    """A drain pool (not started) configured by ``settings``.

    Args:
        backend: The Redis backend the caches write to.
        settings: The validated ``drain`` settings.
        store: The store to write to; None builds it with :func:`store_from_settings`.

    Raises:
        ConfigurationError: The backend is not Redis, or the store cannot be built.
    """
    if not isinstance(backend, RedisBackend):
        raise ConfigurationError(
            "the drain pool needs guard state in Redis (redis_url), not memory://",
            field="drain.enabled",
        )
    return DrainPool(
        backend,
        store if store is not None else store_from_settings(settings),
        namespaces=settings.namespaces or None,
        workers=settings.workers,
        batch_size=settings.batch_size,
        linger=settings.linger,
        lease_ttl=settings.lease_ttl,
        max_deliveries=settings.max_deliveries,
        claim_idle=settings.claim_idle,
        backoff_base=settings.backoff_base,
        backoff_max=settings.backoff_max,
    )
