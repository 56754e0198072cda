"""What :func:`taskguard.aio.connect` returns: the asyncio twin of :class:`taskguard.Client`."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from taskguard.backend import resolve_target
from taskguard.backend.memory import MemoryBackend
from taskguard.cache.config import CacheOptions
from taskguard.guards.breaker_spec import CircuitBreaker
from taskguard.guards.keying import KeySource
from taskguard.guards.quota import Quota
from taskguard.guards.ratelimit import RateLimit
from taskguard.keys import KeySchema
from taskguard.units import Rate
from taskguard.urls import redact

from .base import AsyncBackend, AsyncMemoryBackend
from .breaker import AsyncBreaker
from .cache import AsyncCache
from .locks import AsyncLock, AsyncSemaphore
from .quota import AsyncQuotaLimiter
from .ratelimit import AsyncRateLimiter
from .redis import AsyncRedisBackend

__all__ = ["AsyncClient", "connect"]


class AsyncClient:
    """Builds asyncio rate limiters, quotas, locks, semaphores, breakers and caches on one
    backend.

    The factories take the arguments of :class:`taskguard.Client`'s, with the same
    defaults, and build the same keys: a primitive here and its sync twin of the same
    name, on the same Redis and prefix, share their state.

    Args:
        backend: Where their state lives.

    Example:
        >>> import asyncio, taskguard.aio
        >>> client = taskguard.aio.connect("memory://")
        >>> asyncio.run(client.rate_limiter("emails", "100/m").try_acquire()).allowed
        True
    """

    def __init__(self, backend: AsyncBackend) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"AsyncClient({self.backend!r})"

    @property
    def keys(self) -> KeySchema:
        """The key schema (prefix and hash tag) of the backend."""
        return self.backend.keys

    async def aclose(self) -> None:
        """Stop renewing leases and release the backend's connections."""
        await self.backend.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def rate_limiter(
        self,
        name: str,
        rate: str | Rate,
        *,
        burst: int | None = None,
        key: KeySource = None,
        on_outage: str = "allow",
    ) -> AsyncRateLimiter:
        """Build a GCRA rate limiter named ``name`` (see ``Client.rate_limiter``)."""
        spec = RateLimit(rate, burst=burst, key=key, name=name, on_outage=on_outage)
        return AsyncRateLimiter(self.backend, spec)

    def quota(self, name: str, limit: str, **options: Any) -> AsyncQuotaLimiter:
        """Build a calendar quota named ``name`` (``"10000/day"``, ``"500/month"``) with
        the :class:`~taskguard.Quota` options (``reset``, ``tz``, ``day``, ``key``,
        ``cost``, ``on_outage``, ``per_key``); a Celery task's ``Quota`` of the same name
        counts the same calls."""
        return AsyncQuotaLimiter(self.backend, Quota(limit, name=name, **options))

    def lock(self, name: str, *, ttl: float = 30.0, renew: bool = True) -> AsyncLock:
        """Build a distributed lock on resource ``name`` (see ``Client.lock``); ``renew``
        renews the lease from an asyncio task while it is held."""
        return AsyncLock(self.backend, name, ttl=ttl, renew=renew)

    def semaphore(
        self, name: str, *, limit: int, ttl: float = 60.0, renew: bool = True
    ) -> AsyncSemaphore:
        """Build a fleet-wide semaphore: at most ``limit`` holders of ``name`` at once."""
        return AsyncSemaphore(self.backend, name, limit=limit, ttl=ttl, renew=renew)

    def circuit_breaker(self, name: str, **options: Any) -> AsyncBreaker:
        """Build a fleet-wide circuit breaker named ``name`` with the
        :class:`~taskguard.CircuitBreaker` options (``failure_rate``, ``window``...)."""
        return AsyncBreaker(self.backend, CircuitBreaker(name, **options))

    def cache(
        self,
        namespace: str,
        *,
        ttl: float | timedelta,
        rng: random.Random | None = None,
        **options: Any,
    ) -> AsyncCache:
        """Build a cache for ``namespace`` (needs Redis), sharing its copies (and, for
        write-behind, its queue) with sync caches of the same namespace.

        Args:
            namespace: The namespace, ``[A-Za-z0-9_.-]+``.
            ttl: Seconds (or a timedelta) a cached copy lives. Mandatory.
            rng: Randomness for TTL jitter and early refresh (injectable for tests).
            **options: :class:`~taskguard.cache.CacheOptions` (``codec``, ``jitter``,
                ``negative_ttl``, ``early_refresh``, ``flight_ttl``, ``flight_wait``...);
                ``strategy="write-behind"`` with a ``store`` (and ``capacity``,
                ``on_full``, ``block_timeout``, ``partitions``), else cache-aside (with
                a ``store``: read through on a miss).

        Raises:
            ConfigurationError: An invalid option, write-through or write-around, or a
                backend that is not Redis.
        """
        return AsyncCache(self.backend, namespace, CacheOptions(ttl=ttl, **options), rng=rng)


def connect(
    url: str | MemoryBackend | AsyncBackend | None = None,
    *,
    prefix: str | None = None,
    **options: Any,
) -> AsyncClient:
    """Return an :class:`AsyncClient` for ``url``.

    No connection is made until the first call, so this needs no running event loop; the
    client's calls must then all run in one loop (``redis.asyncio``'s connections belong
    to the loop that opened them).

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` for Redis; ``memory://`` for a
            process-local backend; a sync :class:`~taskguard.MemoryBackend` to share
            (``taskguard.connect("memory://").backend``), or an :class:`AsyncBackend`.
            Defaults to ``$TASKGUARD_REDIS_URL``, then ``redis://localhost:6379/0``.
        prefix: Key prefix for every key this client writes. Defaults to
            ``$TASKGUARD_PREFIX``, then ``"tg"``: use the prefix of the Celery fleet whose
            guards this service shares.
        **options: Passed to :class:`AsyncRedisBackend` (``socket_timeout``,
            ``redis_options``...).

    Raises:
        ValueError: An unsupported URL scheme.
    """
    if isinstance(url, AsyncBackend):
        return AsyncClient(url)
    if isinstance(url, MemoryBackend):
        return AsyncClient(AsyncMemoryBackend(url))
    target, keys = resolve_target(url, prefix)
    if target.startswith("memory://"):
        return AsyncClient(AsyncMemoryBackend(keys=keys, **options))
    if target.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return AsyncClient(AsyncRedisBackend(target, keys=keys, **options))
    raise ValueError(
        f"unsupported backend URL {redact(target)!r}: use redis://, rediss://, unix:// or memory://"
    )
