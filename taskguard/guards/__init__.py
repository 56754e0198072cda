"""Guard specifications and the primitives that run them."""

from .base import OUTAGE_POLICIES, Decision, Guard
from .lock import DistributedLock, HeldLock, Lock
from .ratelimit import RateLimit, RateLimiter

__all__ = [
    "OUTAGE_POLICIES",
    "Decision",
    "DistributedLock",
    "Guard",
    "HeldLock",
    "Lock",
    "RateLimit",
    "RateLimiter",
]
