"""The backend contract: atomic guard primitives behind a small interface.

:class:`RedisBackend` serves a fleet; :class:`MemoryBackend` serves one process (unit tests,
local development, and the ``local`` outage policy). Both pass the same contract tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskguard.keys import KeySchema

from .ops import Admission, BreakerOp, Held, Op

if TYPE_CHECKING:
    from datetime import timedelta

    from taskguard.cache import CacheService, Sessions
    from taskguard.guards.breaker import Breaker
    from taskguard.guards.concurrency import Semaphore
    from taskguard.guards.keying import KeySource
    from taskguard.guards.lock import DistributedLock
    from taskguard.guards.ratelimit import RateLimiter
    from taskguard.heartbeat import Heartbeat
    from taskguard.units import Rate

    from .memory import MemoryBackend

__all__ = ["Backend"]


class Backend(ABC):
    """Runs guard ops atomically and builds the standalone primitives.

    Args:
        keys: The key schema (prefix and hash tag) every key is built with.
    """

    def __init__(self, *, keys: KeySchema | None = None) -> None:
        self.keys = keys or KeySchema()
        self._local: MemoryBackend | None = None
        self._heartbeat: Heartbeat | None = None

    @abstractmethod
    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        """Check every op and commit all or none, atomically, in one round trip.

        Args:
            ops: The ops, in check order.
            reserve_within: When the ops are denied only for lack of rate-limit tokens and
                they would all pass within this many seconds, reserve that future slot
                (the tokens are taken now) and report ``reserved=True``.

        Raises:
            BackendUnavailable: The backend could not be reached.
        """

    @abstractmethod
    def release(self, ops: Sequence[Held]) -> list[int]:
        """Release leases and slots we own, and record breaker outcomes, in one round trip.

        Returns one int per op: for a lease or slot 1 if released, 0 if no longer ours
        (another owner's lease is never touched); for a breaker, the transition code
        (0 none, 1 closed>open, 2 half_open>open, 3 half_open>closed).
        """

    @abstractmethod
    def renew(self, ops: Sequence[Held]) -> list[bool]:
        """Extend leases we own by their TTL, in one round trip; False for each one lost."""

    @abstractmethod
    def owner(self, key: str) -> str | None:
        """The current owner of lease ``key``, or None."""

    @abstractmethod
    def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        """Block until a release pushes to wake-up list ``key`` (True) or ``timeout`` ends."""

    @abstractmethod
    def breaker_state(self, op: BreakerOp) -> str:
        """The effective state of ``op``'s breaker: closed, open, half_open,
        forced_open or disabled."""

    @abstractmethod
    def set_breaker(self, op: BreakerOp, action: str) -> None:
        """Apply ``force_open``, ``disable``, ``force_close`` or ``reset`` to a breaker."""

    @abstractmethod
    def time(self) -> float:
        """The backend's clock, in seconds since the epoch (Redis ``TIME``)."""

    def ping(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Check that the backend answers; raise :class:`BackendUnavailable` if not."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def reset_after_fork(self) -> None:  # noqa: B027 - optional hook
        """Drop state inherited from a parent process (connections, breaker state)."""

    @property
    def heartbeat(self) -> Heartbeat:
        """This process's heartbeat for leases held on this backend (started on first use)."""
        if self._heartbeat is None:
            from taskguard.heartbeat import Heartbeat

            self._heartbeat = Heartbeat(self)
        return self._heartbeat

    def _forget_heartbeat(self) -> None:
        # A forked child inherits the parent's registry but not its thread, and the
        # parent's leases are not the child's to renew.
        self._heartbeat = None

    @property
    def local(self) -> MemoryBackend:
        """A process-local backend with the same key schema, used by the ``local`` policy."""
        if self._local is None:
            from .memory import MemoryBackend

            self._local = MemoryBackend(keys=self.keys)
        return self._local

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
        from taskguard.guards.lock import DistributedLock

        return DistributedLock(self, name, ttl=ttl, renew=renew)

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
        from taskguard.guards.breaker import Breaker, CircuitBreaker

        spec = CircuitBreaker(name, **options)
        if hot_path:
            from taskguard.guards.breaker_hotpath import hot_path_breaker

            return hot_path_breaker(self, spec, flush_interval)
        return Breaker(self, spec)

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
        from taskguard.guards.concurrency import Semaphore

        return Semaphore(self, name, limit=limit, ttl=ttl, renew=renew)

    def cache(
        self,
        namespace: str,
        *,
        ttl: float | timedelta,
        strategy: str = "cache-aside",
        store: Any = None,
        **options: Any,
    ) -> CacheService:
        """Build a cache for ``namespace`` (needs Redis; see docs/caching.md).

        Args:
            namespace: The namespace, ``[A-Za-z0-9_.-]+``.
            ttl: Seconds (or a timedelta) a cached copy lives. Mandatory.
            strategy: ``"cache-aside"``, ``"write-through"``, ``"write-around"`` or
                ``"write-behind"``.
            store: The database (a :class:`taskguard.sinks.Store`); the write strategies
                need one.
            **options: The other :class:`~taskguard.cache.CacheService` options
                (``partitions``, ``codec``, ``jitter``, ``negative_ttl``, ``capacity``,
                ``on_full``, ``block_timeout``, ``early_refresh``...).

        Raises:
            ConfigurationError: An invalid option, or a backend that is not Redis.

        Example:
            >>> import taskguard
            >>> users = taskguard.connect().cache("users", ttl=300)  # doctest: +SKIP
            >>> users.get_or_load("42", lambda: {"name": "Ada"})  # doctest: +SKIP
            {'name': 'Ada'}
        """
        from taskguard.cache import CacheService

        return CacheService(self, namespace, ttl=ttl, strategy=strategy, store=store, **options)

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
        from taskguard.cache import Sessions

        return Sessions(self, ttl=ttl, namespace=namespace, store=store, codec=codec)

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
        from taskguard.guards.ratelimit import RateLimit, RateLimiter

        spec = RateLimit(rate, burst=burst, key=key, name=name, on_outage=on_outage)
        return RateLimiter(self, spec)
