"""What taskguard holds in Redis right now, as data: ``taskguard status`` without the screen.

:func:`read_status` reads one key prefix's guard state (rate-limit buckets, locks,
concurrency slots, breakers, quotas), parked work, write-behind queues and drain pools,
with ``SCAN`` (never ``KEYS``) and pipelined reads, and writes nothing. The admin actions
behind ``taskguard lock release`` and ``taskguard breaker`` are :func:`release_lock` and
:func:`force_breaker`. See docs/status.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from taskguard.backend.base import Backend
from taskguard.backend.redis import HasBackend, require_redis
from taskguard.guards.ratelimit import RateLimit

from .admin import BREAKER_ACTIONS, BreakerChange, ReleasedLock, force_breaker, release_lock
from .guards import read_guards
from .model import (
    BreakerStatus,
    DrainPoolStatus,
    LockHolder,
    ParkedLot,
    ParkedWork,
    PartitionLease,
    QuotaUsage,
    RateBucket,
    SlotHolder,
    SlotSet,
    Status,
    WriteBehindNamespace,
)
from .writebehind import read_drain_pools, read_parked, read_write_behind

__all__ = [
    "BREAKER_ACTIONS",
    "BreakerChange",
    "BreakerStatus",
    "DrainPoolStatus",
    "LockHolder",
    "ParkedLot",
    "ParkedWork",
    "PartitionLease",
    "QuotaUsage",
    "RateBucket",
    "ReleasedLock",
    "SlotHolder",
    "SlotSet",
    "Status",
    "WriteBehindNamespace",
    "force_breaker",
    "read_status",
    "release_lock",
]


def read_status(source: Backend | HasBackend, *, limits: Iterable[RateLimit] = ()) -> Status:
    """Read everything taskguard keeps under the backend's key prefix.

    Args:
        source: A Redis backend, or a client built on one (``taskguard.connect(url)``).
        limits: Rate limits whose buckets should show their level in tokens (Redis keeps
            a bucket's state, not its rate): each applies to the buckets of its ``name``
            (``"default"`` for a limit without one). The others show their backlog only,
            and so do the buckets of a name given two different rates or bursts.

    Raises:
        ConfigurationError: ``source`` is not on Redis.
        BackendUnavailable: Redis could not be reached.
        BackendError: Redis refused a command (an ACL without ``SCAN``, say).

    Example:
        >>> import taskguard
        >>> from taskguard.status import read_status
        >>> client = taskguard.connect("redis://localhost:6379/0")  # doctest: +SKIP
        >>> with client.lock("report:42").acquire(timeout=1):  # doctest: +SKIP
        ...     [held.name for held in read_status(client).locks]
        ['report:42']
    """
    backend = require_redis(source, "status")
    rates = _rates(limits)
    started = time.perf_counter()
    guards = read_guards(backend, rates)
    parked = read_parked(backend)
    write_behind = read_write_behind(backend, also=guards.dead_letter_namespaces)
    pools = read_drain_pools(backend, guards.server_time)
    return Status(
        prefix=backend.keys.prefix,
        server_time=guards.server_time,
        elapsed=time.perf_counter() - started,
        rate_limits=guards.rate_limits,
        locks=guards.locks,
        slots=guards.slots,
        breakers=guards.breakers,
        quotas=guards.quotas,
        parked=parked,
        write_behind=write_behind,
        drain_pools=pools,
        limits_known=tuple(sorted(rates)),
    )


def _rates(limits: Iterable[RateLimit]) -> dict[str, tuple[float, int]]:
    """Limiter name -> (seconds per token, burst); a name with two settings is left out:
    its buckets' level would depend on which limit took the tokens."""
    rates: dict[str, set[tuple[float, int]]] = {}
    for limit in limits:
        if isinstance(limit, RateLimit):
            rates.setdefault(limit.name or "default", set()).add((limit.rate.interval, limit.burst))
    return {name: next(iter(found)) for name, found in rates.items() if len(found) == 1}
