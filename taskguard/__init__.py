"""taskguard: fleet-wide guards for Celery tasks.

Rate limits, concurrency caps, locks and circuit breakers that hold across every worker
process, and a write-behind cache that loses nothing. Documentation: the docs/ folder.
"""

from importlib.metadata import PackageNotFoundError, version

from taskguard.backend import Backend, MemoryBackend, RedisBackend, connect
from taskguard.errors import (
    AlreadyQueued,
    BackendUnavailable,
    CircuitOpen,
    ConcurrencyLimitReached,
    ConfigurationError,
    DeferralExhausted,
    GuardDenied,
    LockHeld,
    LockLost,
    RateLimited,
    TaskGuardError,
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
    Lock,
    RateLimit,
    RateLimiter,
    Semaphore,
)
from taskguard.task import GuardedTask
from taskguard.units import Rate, parse_rate

try:
    __version__ = version("celery-taskguard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AlreadyQueued",
    "Backend",
    "BackendUnavailable",
    "Breaker",
    "CircuitBreaker",
    "CircuitOpen",
    "Concurrency",
    "ConcurrencyControl",
    "ConcurrencyLimitReached",
    "ConfigurationError",
    "Decision",
    "DeferralExhausted",
    "DistributedLock",
    "Guard",
    "GuardDenied",
    "GuardedTask",
    "HeldLease",
    "HeldLock",
    "Lock",
    "LockHeld",
    "LockLost",
    "MemoryBackend",
    "Rate",
    "RateLimit",
    "RateLimited",
    "RateLimiter",
    "RedisBackend",
    "Semaphore",
    "TaskGuardError",
    "__version__",
    "connect",
    "parse_rate",
]
