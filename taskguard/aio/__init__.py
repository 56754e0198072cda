"""taskguard for asyncio: the guards of a Celery fleet, from FastAPI or aiohttp services.

``taskguard.aio.connect(url, prefix=...)`` returns an :class:`AsyncClient` whose rate
limiters, quotas, locks, semaphores, circuit breakers and caches (cache-aside and
write-behind) run on ``redis.asyncio`` with the sync API's keys and Lua scripts: on one
Redis and one prefix, both APIs share every bucket, quota, lock (and its fencing tokens),
slot, breaker, cached copy and write-behind queue. See docs/asyncio.md.
"""

from .base import AsyncBackend, AsyncMemoryBackend
from .breaker import AsyncBreaker, AsyncBreakerCall
from .cache import AsyncCache
from .client import AsyncClient, connect
from .decision import Acquiring, AsyncDecision
from .leases import AsyncHeldLease
from .locks import AsyncLock, AsyncSemaphore
from .quota import AsyncQuotaLimiter
from .ratelimit import AsyncRateLimiter
from .redis import AsyncRedisBackend

__all__ = [
    "Acquiring",
    "AsyncBackend",
    "AsyncBreaker",
    "AsyncBreakerCall",
    "AsyncCache",
    "AsyncClient",
    "AsyncDecision",
    "AsyncHeldLease",
    "AsyncLock",
    "AsyncMemoryBackend",
    "AsyncQuotaLimiter",
    "AsyncRateLimiter",
    "AsyncRedisBackend",
    "AsyncSemaphore",
    "connect",
]
