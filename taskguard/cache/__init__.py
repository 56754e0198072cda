"""Cache service and strategies; the write-behind queue (see docs/caching.md)."""

from __future__ import annotations

from .config import ON_FULL, STRATEGIES, CacheOptions
from .service import CacheService
from .sessions import Sessions
from .xfetch import should_refresh_early

__all__ = [
    "ON_FULL",
    "STRATEGIES",
    "CacheOptions",
    "CacheService",
    "Sessions",
    "should_refresh_early",
]
