"""taskguard: fleet-wide guards for Celery tasks.

Rate limits, concurrency caps, locks and circuit breakers that hold across every worker
process, and a write-behind cache that loses nothing. Documentation: the docs/ folder.
"""

from importlib.metadata import PackageNotFoundError, version

from taskguard.backend import Backend, MemoryBackend, RedisBackend
from taskguard.cache import CacheService, Sessions
from taskguard.celery import GuardedTask
from taskguard.client import Client, connect
from taskguard.drain import DrainPool
from taskguard.errors import (
    AlreadyQueued,
    BackendError,
    BackendUnavailable,
    CircuitOpen,
    ConcurrencyLimitReached,
    ConfigurationError,
    DeferralExhausted,
    GuardDenied,
    LockHeld,
    LockLost,
    RateLimited,
    StoreError,
    TaskGuardError,
    UnstorableValue,
    WriteBehindFull,
)
from taskguard.guards import (
    Breaker,
    CircuitBreaker,
    Concurrency,
    ConcurrencyControl,
    Decision,
    DistributedLock,
    Guard,
    HeldLease,
    HeldLock,
    HotPathBreaker,
    Lock,
    RateLimit,
    RateLimiter,
    Semaphore,
)
from taskguard.guards.debounce import Debounce, Superseded
from taskguard.guards.quota import Quota, QuotaLimiter
from taskguard.integrations import worker as _metrics_worker  # noqa: F401 - adds the step
from taskguard.units import Rate, parse_rate

try:
    __version__ = version("celery-taskguard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AlreadyQueued",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "Breaker",
    "CacheService",
    "CircuitBreaker",
    "CircuitOpen",
    "Client",
    "Concurrency",
    "ConcurrencyControl",
    "ConcurrencyLimitReached",
    "ConfigurationError",
    "Debounce",
    "Decision",
    "DeferralExhausted",
    "DistributedLock",
    "DrainPool",
    "Guard",
    "GuardDenied",
    "GuardedTask",
    "HeldLease",
    "HeldLock",
    "HotPathBreaker",
    "Lock",
    "LockHeld",
    "LockLost",
    "MemoryBackend",
    "Quota",
    "QuotaLimiter",
    "Rate",
    "RateLimit",
    "RateLimited",
    "RateLimiter",
    "RedisBackend",
    "Semaphore",
    "Sessions",
    "StoreError",
    "Superseded",
    "TaskGuardError",
    "UnstorableValue",
    "WriteBehindFull",
    "__version__",
    "connect",
    "parse_rate",
]
