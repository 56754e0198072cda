"""What :func:`taskguard.connect` returns: a small façade that builds the primitives.

The backend below it runs atomic ops and knows nothing of locks, limiters or caches; the
client puts them together. Every primitive is also constructible directly from a backend
(``RateLimiter(backend, RateLimit(...))``); the client only saves the wiring.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from taskguard._limits import RunTimeLimits
from taskguard.backend import Backend, backend_from_url
from taskguard.backend.parking import Parking
from taskguard.backend.redis import RedisBackend
from taskguard.cache import CacheOptions, CacheService, Sessions
from taskguard.events import EventStream, subscribe
from taskguard.guards.breaker import Breaker, CircuitBreaker
from taskguard.guards.breaker_hotpath import hot_path_breaker
from taskguard.guards.concurrency import Semaphore
from taskguard.guards.keying import KeySource
from taskguard.guards.lock import DistributedLock
from taskguard.guards.ratelimit import RateLimit
from taskguard.guards.ratelimiter import RateLimiter
from taskguard.keys import KeySchema
from taskguard.units import Rate

__all__ = ["Client", "connect"]


class Client(RunTimeLimits):
    """Builds rate limiters, locks, semaphores, breakers, caches and sessions on one backend.

    Args:
        backend: Where their state lives.

    Example:
        >>> import taskguard
        >>> client = taskguard.connect("memory://")
        >>> client.rate_limiter("emails", "100/m").try_acquire().allowed
        True
        >>> with taskguard.connect("memory://") as client:  # closed at the end
        ...     client.rate_limiter("emails", "100/m").try_acquire().allowed
        True
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"Client({self.backend!r})"

    @property
    def keys(self) -> KeySchema:
        """The key schema (prefix and hash tag) of the backend."""
        return self.backend.keys

    def close(self) -> None:
        """Release the backend's connections.

        redis-py's clients hold reference cycles, so a client dropped without ``close()``
        is freed by the garbage collector, whenever it runs: its sockets may then be
        finalized open (a ``ResourceWarning``). Close it, or use it as a context manager.
        """
        self.backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def parked(self) -> dict[str, int]:
        """Guarded tasks parked in Redis, per guard key: refused by a concurrency cap or a
        lock, each waits for a release to hand it back (docs/deferral.md). Empty on the
        memory backend, which defers by time.

        Example:
            >>> import taskguard
            >>> taskguard.connect("memory://").parked()
            {}
        """
        if not isinstance(self.backend, RedisBackend):
            return {}
        return Parking(self.backend).counts()

    def events(
        self, *, types: Iterable[str] | None = None, timeout: float | None = None
    ) -> EventStream:
        """Subscribe to the guard events of this client's prefix, from every process
        (docs/observability.md, "Guard events"): :func:`taskguard.events.subscribe`.

        Args:
            types: Receive only these event types (default: every type).
            timeout: Iteration ends when no event came for this many seconds (default:
                it goes on until the stream is closed).

        Example:
            >>> import taskguard
            >>> client = taskguard.connect("memory://")
            >>> with client.events(types=["circuit_state_changed"], timeout=0.1) as stream:
            ...     list(stream)
            []
        """
        return subscribe(self, types=types, timeout=timeout)

    def lock(self, name: str, *, ttl: float = 30.0, renew: bool = True) -> DistributedLock:
        """Build a standalone distributed lock on resource ``name``.

        Args:
            name: The resource; every process using this name shares the lock.
            ttl: Lease seconds; a crashed holder's lock frees itself after this.
            renew: Renew the lease from the process heartbeat while held (so the TTL
                only matters after a crash).

        Example:
            >>> import taskguard
            >>> lock = taskguard.connect("memory://").lock("invoice:7", ttl=10)
            >>> held = lock.acquire(timeout=1)
            >>> lock.try_acquire().allowed
            False
            >>> held.release()
            True
        """

        return DistributedLock(self.backend, name, ttl=ttl, renew=renew)

    def circuit_breaker(
        self, name: str, *, hot_path: bool = False, flush_interval: float = 0.05, **options: Any
    ) -> Breaker:
        """Build a fleet-wide circuit breaker named ``name``.

        Args:
            name: The breaker; every process using this name shares its state.
            hot_path: Let ``call()`` decide from a state kept in the process while closed and
                flush the outcomes in batches (no round trip per call; a trip lags by up
                to one ``flush_interval``). See docs/breakers.md, "Hot-path mode".
            flush_interval: Seconds between two flushes in hot-path mode (at most 1).
            **options: The :class:`~taskguard.CircuitBreaker` options (``failure_rate``,
                ``window``, ``open_for``, ``half_open_probes``...).

        Example:
            >>> import taskguard
            >>> breaker = taskguard.connect("memory://").circuit_breaker("geo", window=10)
            >>> breaker.call(lambda: "ok"), breaker.state
            ('ok', 'closed')
        """

        spec = CircuitBreaker(name, **options)
        if hot_path:
            return hot_path_breaker(self.backend, spec, flush_interval)
        return Breaker(self.backend, spec)

    def semaphore(
        self, name: str, *, limit: int, ttl: float = 60.0, renew: bool = True
    ) -> Semaphore:
        """Build a fleet-wide semaphore: at most ``limit`` holders of ``name`` at once.

        Args:
            name: The resource; every process using this name shares the slots.
            limit: Slots (may be changed later on the returned object).
            ttl: Lease seconds; a crashed holder's slot frees itself after this.
            renew: Renew held slots from the process heartbeat.

        Example:
            >>> import taskguard
            >>> partner = taskguard.connect("memory://").semaphore("partner-api", limit=5)
            >>> partner.run(lambda: "called")
            'called'
        """

        return Semaphore(self.backend, name, limit=limit, ttl=ttl, renew=renew)

    def cache(
        self,
        namespace: str,
        *,
        ttl: float | timedelta,
        rng: random.Random | None = None,
        **options: Any,
    ) -> CacheService:
        """Build a cache for ``namespace`` (needs Redis; see docs/caching.md).

        Args:
            namespace: The namespace, ``[A-Za-z0-9_.-]+``.
            ttl: Seconds (or a timedelta) a cached copy lives. Mandatory.
            rng: Randomness for TTL jitter and early refresh (injectable for tests).
            **options: Passed through to :class:`~taskguard.cache.CacheOptions`, which
                declares each with its default: ``strategy``, ``store``, ``partitions``,
                ``codec``, ``jitter``, ``negative_ttl``, ``capacity``, ``on_full``,
                ``block_timeout``, ``early_refresh``, ``flight_ttl``, ``flight_wait``,
                ``replicas``, ``replica_timeout``.

        Raises:
            ConfigurationError: An invalid option, or a backend that is not Redis.
            TypeError: An unknown option.

        Example:
            >>> import taskguard
            >>> users = taskguard.connect().cache("users", ttl=300)  # doctest: +SKIP
            >>> users.get_or_load("42", lambda: {"name": "Ada"})  # doctest: +SKIP
            {'name': 'Ada'}
        """

        return CacheService(self.backend, namespace, CacheOptions(ttl=ttl, **options), rng=rng)

    def sessions(
        self,
        *,
        ttl: float | timedelta,
        namespace: str = "sessions",
        store: Any = None,
        codec: str = "json",
    ) -> Sessions:
        """Build a session store with sliding expiry (needs Redis; see docs/caching.md).

        Args:
            ttl: Seconds (or a timedelta) a session lives after its last use.
            namespace: Keeps these sessions apart from others.
            store: Optional durable copy (a :class:`taskguard.sinks.Store`).
            codec: ``"json"`` or ``"msgpack"``.

        Example:
            >>> sessions = taskguard.connect().sessions(ttl=1800)  # doctest: +SKIP
            >>> sid = sessions.new({"user": 42})  # doctest: +SKIP
        """

        return Sessions(self.backend, ttl=ttl, namespace=namespace, store=store, codec=codec)

    def rate_limiter(
        self,
        name: str,
        rate: str | Rate,
        *,
        burst: int | None = None,
        key: KeySource = None,
        on_outage: str = "allow",
    ) -> RateLimiter:
        """Build a standalone GCRA rate limiter named ``name``.

        Args:
            name: The limiter's name; all processes using one name share its buckets.
            rate: ``"10/s"``, ``"100/m"``, ``"5000/h"``, ``"1000/d"`` or a :class:`Rate`.
            burst: Tokens an idle bucket hands out at once (default 1: evenly spaced).
            key: For use as a decorator: a template over the decorated function's
                arguments (``"{user_id}"``) or a callable, choosing the bucket per call.
            on_outage: What to do while the backend is unreachable: ``"allow"``,
                ``"deny"`` or ``"local"`` (limit per process).

        Example:
            >>> import taskguard
            >>> limiter = taskguard.connect("memory://").rate_limiter("api", "10/s", burst=2)
            >>> limiter.try_acquire(key="customer-1").allowed
            True
        """

        spec = RateLimit(rate, burst=burst, key=key, name=name, on_outage=on_outage)
        return RateLimiter(self.backend, spec)


def connect(
    url: str | Backend | Client | None = None, *, prefix: str | None = None, **options: Any
) -> Client:
    """Return a :class:`Client` for ``url``.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` or
            ``redis+sentinel://`` for Redis; ``memory://`` for a
            process-local backend; an existing :class:`Backend` is wrapped, a
            :class:`Client` returned as is. Defaults to ``$TASKGUARD_REDIS_URL``, then
            ``redis://localhost:6379/0``.
        prefix: Key prefix for every key this client writes. Defaults to
            ``$TASKGUARD_PREFIX``, then ``"tg"``.
        **options: Passed to :class:`RedisBackend` (``socket_timeout``, ``redis_options``...).

    Raises:
        ValueError: An unsupported URL scheme.

    Example:
        >>> import taskguard
        >>> client = taskguard.connect("memory://")
        >>> client.rate_limiter("emails", "100/m").try_acquire().allowed
        True
    """
    if isinstance(url, Client):
        return url
    if isinstance(url, Backend):
        return Client(url)
    return Client(backend_from_url(url, prefix=prefix, **options))
