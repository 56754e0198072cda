"""Guard specifications and the primitives that run them."""

from .base import OUTAGE_POLICIES, Decision, Guard
from .breaker import Breaker, BreakerCall, CircuitBreaker
from .breaker_hotpath import HotPathBreaker
from .concurrency import Concurrency, ConcurrencyControl, Semaphore
from .leases import HeldLease
from .lock import DistributedLock, HeldLock, Lock
from .ratelimit import RateLimit
from .ratelimiter import RateLimiter

__all__ = [
    "OUTAGE_POLICIES",
    "Breaker",
    "BreakerCall",
    "CircuitBreaker",
    "Concurrency",
    "ConcurrencyControl",
    "Decision",
    "DistributedLock",
    "Guard",
    "HeldLease",
    "HeldLock",
    "HotPathBreaker",
    "Lock",
    "RateLimit",
    "RateLimiter",
    "Semaphore",
]
